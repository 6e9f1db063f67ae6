"""datarun: versioned, provenance-tracked data for jobs that run on Kubernetes.

The public API is :mod:`datarun.repo` (``connect()`` and ``Client``) and :func:`open`; the CLI
is ``datarun``. ``datarun://`` URLs also work in fsspec, pandas, pyarrow and DuckDB
(:mod:`datarun.fs.spec`).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datarun.repo import Client

__version__ = "0.1.0"


def open(  # the name users expect, as with fsspec.open and builtins.open
    url: str,
    mode: str = "rb",
    *,
    client: Client | None = None,
    store: str | None = None,
    encoding: str | None = None,
) -> IO[Any]:
    """Open ``datarun://REPO@LABEL/path`` (or ``@BUNDLE_ID``) for reading, without fsspec.

    ``mode`` is ``rb`` (a seekable binary file) or ``r`` (text, ``encoding`` default UTF-8).
    The store is ``client``'s, else ``store``, else the one the CLI would use. Reads fetch only
    the chunks they need and check every chunk's hash.
    """
    from datarun.fs.reader import open_url  # lazily: `import datarun` stays cheap for the CLI

    return open_url(url, mode, client=client, store=store, encoding=encoding)
