"""Large files written around the page cache (``O_DIRECT``), from aligned buffers.

A buffered write makes the kernel allocate a page-cache page per 4 KiB, insert it, reserve its
delayed allocation and copy into it: on the 2-core machines these benchmarks run on that is
~1.3 s of kernel CPU for 512 MiB, while ``O_DIRECT`` writes of the same bytes hand them to the
device from the process's own pages in ~0.2 s (``dd bs=8M``, 3 runs each). So a download
assembles each work unit of a large file in one page-aligned buffer (``LocalPacks.read_into``
fills it straight from a local pack; other chunks are copied in) and writes the aligned middle
direct. The few bytes at either end that do not fill a whole block go through an ordinary
buffered descriptor: the block they share with the neighbouring unit is then merged in the page
cache, never written twice from the device's side.

Pack spools of a local store are written the same way (:class:`AlignedSpool`): an upload of the
same 512 MiB used to spend the same ~1.3 s of kernel CPU filling the page cache with packs that
are then only fsynced, renamed and left alone.

A filesystem that refuses ``O_DIRECT`` (``EINVAL`` on open or on the first write: tmpfs before
Linux 6.6, some FUSE filesystems) makes the writer fall back to buffered writes, with nothing
written wrongly: a direct write either lands whole or not at all.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

ALIGN = 4096  # a multiple of every logical block size in use; ext4's block
DIRECT_FROM = 1 << 20  # files at least this large are written direct
DIRECT_MAX_UNIT = 64 << 20  # a unit whose plaintext is larger (very compressible data) stays buffered
REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}

_local = threading.local()


def unit_buffer(size: int) -> memoryview:
    """A page-aligned scratch buffer of at least ``size`` bytes, one per thread, reused: a fresh
    anonymous map per unit would pay its page faults and zeroing every time."""
    held: mmap.mmap | None = getattr(_local, "buffer", None)
    if held is None or len(held) < size:
        if held is not None:
            held.close()
        held = mmap.mmap(-1, max(size, 8 << 20) + ALIGN)
        _local.buffer = held
    return memoryview(held)


def open_direct(path: str | os.PathLike[str]) -> int:
    """A write-only ``O_DIRECT`` descriptor of an existing file; -1 if the filesystem refuses."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in REFUSED:
            return -1
        raise


def write_span(direct_fd: int, buffered_fd: int, buffer: memoryview, head: int, start: int, length: int) -> bool:
    """Write ``buffer[head : head + length]`` to file offset ``start``, where ``head`` is
    ``start % ALIGN`` so that buffer and file agree on where each block begins.

    The whole blocks go through ``direct_fd`` and the partial ones at the ends through
    ``buffered_fd``. Returns False if the direct write was refused before writing anything; the
    span was then written buffered.
    """
    assert head == start % ALIGN
    end = start + length
    inner_start = -(-start // ALIGN) * ALIGN
    inner_end = end - end % ALIGN
    refused = False
    if direct_fd >= 0 and inner_start < inner_end:
        lo, hi = inner_start - start + head, inner_end - start + head
        try:
            _write_all(direct_fd, buffer[lo:hi], inner_start)
        except OSError as err:
            if err.errno not in REFUSED:
                raise
            refused = True
            inner_start = inner_end = end  # everything below goes buffered
    else:
        inner_start = inner_end = end
    if start < inner_start:
        _write_all(buffered_fd, buffer[head : head + inner_start - start], start)
    if inner_end < end:
        _write_all(buffered_fd, buffer[head + inner_end - start : head + length], inner_end)
    return not refused


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class AlignedSpool:
    """A new file written front to back, like a ``wb`` file object, through an aligned buffer
    whose whole blocks go direct; the last partial block goes buffered at ``close``. The
    caller fsyncs it as before, which also covers that last block and the file's size."""

    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            self._direct_fd = open_direct(path)
        except OSError:
            os.close(self._fd)
            raise
        self._view = memoryview(buffer)
        self._fill = 0
        self._offset = 0  # file offset of the buffer's first byte: a multiple of ALIGN

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            take = min(len(self._view) - self._fill, len(view))
            self._view[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._view):
                self._flush()
        return size

    def _flush(self) -> None:
        if self._fill:
            if not write_span(self._direct_fd, self._fd, self._view, 0, self._offset, self._fill):
                os.close(self._direct_fd)  # refused: the rest of this file goes buffered
                self._direct_fd = -1
            self._offset += self._fill
            self._fill = 0

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self._view.release()
            for fd in (self._direct_fd, self._fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._direct_fd = -1
