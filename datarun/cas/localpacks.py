"""Raw frames of a local pack read straight into a caller's buffer, then hash-checked.

On a local store a raw frame (stored uncompressed, FORMAT.md §2.3) is the file's bytes as they
are, so a download can ``preadv`` it from the pack into the very buffer it will write out: one
kernel copy, no ``bytes`` object in between. The check stays what every reader does (§8.3): the
BLAKE3 of the bytes in the buffer, which are the bytes that get written, against the chunk's
digest.
"""

from __future__ import annotations

import os

from datarun.cas.chunker import digest
from datarun.errors import IntegrityError
from datarun.layout import pack_key
from datarun.model import ChunkRef
from datarun.store import ObjectStore


class LocalPacks:
    """The local packs one download work unit reads from, each opened once.

    ``read_into`` answers False for what it does not read (a compressed frame, a store that is
    not a local folder); the caller fetches that chunk through ``cas.reader``. Use it as a
    context manager, so the pack descriptors are closed.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._local = store.local_path() is not None
        self._fds: dict[str, int] = {}

    def __enter__(self) -> LocalPacks:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read_into(self, ref: ChunkRef, target: memoryview, owner: str) -> bool:
        """Fill ``target`` (``ref.size`` bytes) with the verified plaintext of ``ref``."""
        if not self._local or ref.compressed or ref.stored_size != ref.size:
            return False
        fd = self._fds.get(ref.pack)
        if fd is None:
            path = self._store.local_path(pack_key(ref.pack))
            assert path is not None
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(f"`{owner}`: pack {ref.pack[:16]} is missing from the store") from None
            except OSError:
                return False  # unreadable here: the ordinary read reports it as the store's error
            self._fds[ref.pack] = fd
        done = 0
        while done < ref.size:
            n = os.preadv(fd, [target[done:]], ref.offset + done)
            if n == 0:
                raise IntegrityError(
                    f"`{owner}`: chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} is truncated "
                    f"({done} of {ref.size} bytes)"
                )
            done += n
        if digest(target) != ref.digest:
            raise IntegrityError(
                f"`{owner}`: chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} fails its hash check"
            )
        return True
