"""Progress of a transfer, reported to a callback object (fsspec's callbacks are the model).

The API takes a ``Callback`` wherever bytes move: upload, download, verify. The base class does
nothing, so a library caller pays nothing and need not pass one; the CLI hands in a rich bar
(``cli/progress.py``). Sizes and updates count bytes.
"""

from __future__ import annotations


class Callback:
    """Progress of one transfer, in bytes. Subclasses draw or record; this one does nothing."""

    __slots__ = ()

    def set_size(self, size: int | None) -> None:
        """The total, once it is known (None: not known)."""

    def relative_update(self, inc: int = 1) -> None:
        """``inc`` more bytes are done. Called from worker threads too: keep it thread-safe."""

    def branched(self, path_1: str, path_2: str) -> Callback:
        """The callback for moving one file, ``path_1`` to ``path_2``, within this transfer.

        The default child counts its updates toward this callback and ignores its own size, so
        a bar over the whole transfer keeps counting; override it to follow files one by one.
        """
        return _Branch(self)


class _Branch(Callback):
    __slots__ = ("_parent",)

    def __init__(self, parent: Callback) -> None:
        self._parent = parent

    def relative_update(self, inc: int = 1) -> None:
        self._parent.relative_update(inc)


class _Silent(Callback):
    __slots__ = ()

    def branched(self, path_1: str, path_2: str) -> Callback:
        return self  # nothing to count toward: skip making a child per file


NO_PROGRESS: Callback = _Silent()
"""The default: reports nowhere."""
