"""Content-defined chunking (FastCDC 2020) and BLAKE3 digests.

The parameters are part of the storage format: changing them changes chunk boundaries, which
would not corrupt anything but would stop dedup against older bundles. ``CHUNKER_ID`` names
them, and the local hash cache keys on it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import blake3

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

AVG_SIZE = 1 << 20
MIN_SIZE = 256 << 10
MAX_SIZE = 4 << 20
CHUNKER_ID = "fastcdc2020/avg=1M/min=256K/max=4M/nc=1/seed=0"


@functools.cache
def _cutter() -> FastCDC:
    # Imported on first use: an unchanged re-upload, a download and a mount never cut a chunk.
    from pyfastcdc import FastCDC

    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)


_PARALLEL_HASH_FROM = 256 << 10


def digest(data: bytes | bytearray | memoryview) -> bytes:
    # blake3 holds the GIL while it hashes; letting it split big chunks over its own threads
    # shortens that hold by ~20% on two cores. Small inputs are not worth the hand-off.
    if len(data) >= _PARALLEL_HASH_FROM:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()
    return blake3.blake3(data).digest()


def iter_chunks(path: str | Path, size: int) -> Iterator[memoryview]:
    """Yield the chunks of the file at ``path``, streaming.

    Each yielded view is valid only until the next one is requested, so callers hash and
    copy it immediately; memory stays at a few MiB whatever the file size. Small files (the
    common case in ML datasets) are one read and at most a handful of cuts.
    """
    with open(path, "rb", buffering=0) as handle:
        if size <= MAX_SIZE:
            data = handle.read()
            if len(data) <= MIN_SIZE:
                if data:
                    yield memoryview(data)
                return
            view = memoryview(data)
            for chunk in _cutter().cut_buf(view):
                yield view[chunk.offset : chunk.offset + chunk.length]
            return
        for chunk in _cutter().cut_stream(handle):
            yield chunk.data


def iter_stream_chunks(handle: BinaryIO) -> Iterator[memoryview]:
    """Chunks of a stream of unknown length (a pipe), cut exactly as a file with the same bytes.

    Short reads are normal on a pipe; the chunker keeps reading until its buffer is full or
    the writer closes its end. Each view is valid only until the next one is requested.
    """
    for chunk in _cutter().cut_stream(handle):
        yield chunk.data
