"""Chunks of a file being uploaded, cut and hashed ahead of the packer on a helper thread.

FastCDC, BLAKE3 and file reads release the GIL, so cutting the next chunks overlaps with the
uploader compressing and writing the previous ones. Queues bound memory to a few chunks.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from datarun.cas.chunker import digest, iter_chunks, iter_stream_chunks

_READ_AHEAD_CHUNKS = 8
COMPRESS_AHEAD = 8  # chunks being compressed ahead of the packer: bounds memory to a few chunks
_compress_threads: ThreadPoolExecutor | None = None
_compress_lock = threading.Lock()


def compress_pool() -> ThreadPoolExecutor:
    """One process-wide pool (zstd releases the GIL), created on first use."""
    global _compress_threads
    with _compress_lock:
        if _compress_threads is None:
            _compress_threads = ThreadPoolExecutor(
                max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="datarun-zstd"
            )
        return _compress_threads


PARALLEL_FROM = 16 << 20  # files this big get a chunking thread and parallel compression


def chunks_with_digests(path: str, size: int) -> Iterator[tuple[memoryview, bytes | None]]:
    """Chunks of one file, with their digests when a helper thread cut them (big files only:
    a small file is not worth a thread, and its digests are computed by the packer)."""
    if size < PARALLEL_FROM:
        for chunk in iter_chunks(path, size):
            yield chunk, None
        return
    yield from _hashed_ahead(lambda: iter_chunks(path, size))


def fifo_chunks_with_digests(path: str) -> Iterator[tuple[memoryview, bytes | None]]:
    """Chunks of what a writer pushes through the named pipe at ``path``, until it closes it."""

    def chunks() -> Iterator[memoryview]:
        with open(path, "rb", buffering=0) as handle:
            yield from iter_stream_chunks(handle)

    yield from _hashed_ahead(chunks)


def _hashed_ahead(source: Callable[[], Iterator[memoryview]]) -> Iterator[tuple[memoryview, bytes | None]]:
    ahead: queue.Queue[tuple[bytes, bytes] | BaseException | None] = queue.Queue(_READ_AHEAD_CHUNKS)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in source():
                if stop.is_set():
                    return
                data = bytes(chunk)  # the view is reused by the chunker once we move on
                ahead.put((data, digest(data)))
            ahead.put(None)
        except BaseException as err:
            ahead.put(err)

    worker = threading.Thread(target=produce, name="datarun-chunker", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield memoryview(item[0]), item[1]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ahead.get_nowait()
            worker.join(0.01)
