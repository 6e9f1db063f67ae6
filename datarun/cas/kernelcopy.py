"""Raw chunks of a local pack copied straight into a file by the kernel, then hash-checked.

On a local store a raw frame (stored uncompressed, FORMAT.md §2.3) is the file's bytes as they
are, so ``copy_file_range(2)`` can move it from the pack into the destination inside the kernel:
no read into Python, no second copy out. The check stays what every reader does (§8.3): once the
frame has landed, the destination's bytes are mapped and their BLAKE3 compared with the chunk's
digest. What is verified is what was written, not the pack it came from.

Where the kernel will not copy between the two files (another filesystem on an old kernel, a
filesystem without support), :func:`copy_raw_chunk` says so before writing anything and the
caller reads the chunk the ordinary way.
"""

from __future__ import annotations

import errno
import mmap
import os

from datarun.cas.chunker import digest
from datarun.errors import IntegrityError
from datarun.layout import pack_key
from datarun.model import ChunkRef
from datarun.store import ObjectStore

_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}
_PAGE = mmap.ALLOCATIONGRANULARITY


def copy_raw_chunk(pack_fd: int, ref: ChunkRef, dest_fd: int, dest_offset: int) -> bool:
    """Copy the raw frame ``ref`` from ``pack_fd`` to ``dest_offset`` of ``dest_fd`` (opened for
    reading and writing) and check its hash; False, with nothing written, if the kernel cannot
    copy between these files. A short pack or a wrong hash raises IntegrityError."""
    assert not ref.compressed and ref.stored_size == ref.size, "only raw frames are copied as they are"
    done = 0
    while done < ref.size:
        try:
            n = os.copy_file_range(pack_fd, dest_fd, ref.size - done, ref.offset + done, dest_offset + done)
        except OSError as err:
            if done == 0 and err.errno in _UNSUPPORTED:
                return False
            raise
        if n == 0:
            raise IntegrityError(
                f"chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} is truncated ({done} of {ref.size} bytes)"
            )
        done += n
    if ref.size == 0:
        return True
    start = dest_offset - dest_offset % _PAGE
    mapped = mmap.mmap(dest_fd, dest_offset + ref.size - start, access=mmap.ACCESS_READ, offset=start)
    try:
        view = memoryview(mapped)
        try:
            ok = digest(view[dest_offset - start :]) == ref.digest
        finally:
            view.release()
    finally:
        mapped.close()
    if not ok:
        raise IntegrityError(f"chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} fails its hash check")
    return True


class KernelCopier:
    """Kernel-side copies for one download work unit: holds each local pack open once.

    ``copy`` answers False for what it does not copy (a compressed frame, a store that is not a
    local folder, a kernel that refuses), and the caller reads that chunk through
    ``cas.reader``. Use it as a context manager, so the pack descriptors are closed.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._local = store.local_path() is not None
        self._fds: dict[str, int] = {}
        self._refused = False

    def __enter__(self) -> KernelCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def copy(self, ref: ChunkRef, dest_fd: int, dest_offset: int, owner: str) -> bool:
        if not self._local or self._refused or ref.compressed or ref.stored_size != ref.size:
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
        try:
            if copy_raw_chunk(fd, ref, dest_fd, dest_offset):
                return True
        except IntegrityError as err:
            raise IntegrityError(f"`{owner}`: {err}") from None
        self._refused = True
        return False
