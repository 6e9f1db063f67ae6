"""A seekable, read-only file over one file of a bundle, and ``datarun.open``.

Reads fetch only the chunks that overlap them (``Client.read_chunks``, each one hash-checked)
and keep recent chunks in a small cache, so the footer-then-column reads of a parquet reader
cost about the bytes they ask for. When reads run forward the next chunks are fetched on a
worker thread while the caller decodes, which is what keeps a full sequential read close to
the speed of a local file.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from datarun.errors import NotFoundError, UsageError
from datarun.fs.url import BundleURL, parse_url
from datarun.ids import is_ksuid
from datarun.model import FILE, Bundle, FileEntry
from datarun.repo import Client, connect

CACHE_BYTES = 64 << 20  # decoded chunks kept per open file
READAHEAD_BYTES = 16 << 20  # fetched ahead of a forward reader
FETCH_THREADS = 4  # spans in flight per open file
_SPAN_BYTES = 4 << 20  # one read_chunks call fetches at most about this much


def resolve_ref(client: Client, repo: str, ref: str) -> Bundle:
    """A bundle named by an id or a label. A 27-character name is tried as an id first, then as
    a label, since labels of that shape are legal."""
    if is_ksuid(ref):
        try:
            return client.get_bundle(repo, ref)
        except NotFoundError:
            pass
    return client.resolve(repo, label=ref)


class BundleReader(io.RawIOBase):
    def __init__(self, client: Client, entry: FileEntry, *, name: str = "") -> None:
        super().__init__()
        if entry.kind != FILE:
            raise UsageError(f"`{entry.path}` is a {entry.kind}, not a file")
        self.client = client
        self.entry = entry
        self.name = name or entry.path
        self.size = entry.size
        self.fetched_bytes = 0  # plaintext bytes of chunks fetched from the store (bench, tests)
        self._starts: list[int] = []
        offset = 0
        for ref in entry.chunks:
            self._starts.append(offset)
            offset += ref.size
        self._pos = 0
        self._cache: OrderedDict[int, bytes | memoryview] = OrderedDict()
        self._cached_bytes = 0
        # chunk index -> (the fetch of its span, its place in that span)
        self._inflight: dict[int, tuple[Future[list[bytes | memoryview]], int]] = {}
        self._last_end = -1
        # Reentrant: a fetch that is already done runs its callback (which locks) in add_done_callback.
        # Never held while waiting for a fetch.
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- io.RawIOBase ---------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset} before the start of `{self.name}`")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        # Straight from the chunk cache: RawIOBase.read would copy once more through readinto.
        if size is None or size < 0:
            return self.readall()
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        data = self.pread(self._pos, max(self.size - self._pos, 0))
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        super().close()

    # -- ranged reads --------------------------------------------------------------------------

    def pread(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (short at the end of the file); the position is kept.

        Safe from several threads at once, as pyarrow calls it: chunks another read is already
        fetching are waited for, not fetched twice, and the missing ones are fetched in spans on
        the worker threads, so one large read is several requests in flight.
        """
        if self.closed:
            raise ValueError("read of a closed file")
        end = min(start + length, self.size)
        if start >= end:
            return b""
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, end - 1) - 1
        with self._lock:
            forward = start == self._last_end
            self._last_end = end
        parts = self._gather(first, last)
        if forward:
            with self._lock:
                self._submit_missing(range(last + 1, len(self.entry.chunks)), READAHEAD_BYTES)
        head = start - self._starts[first]
        if len(parts) == 1:
            return bytes(parts[0][head : head + end - start])
        # One copy: the first and last chunks enter the join as views of the bytes the read wants.
        tail = end - self._starts[last]
        return b"".join([memoryview(parts[0])[head:], *parts[1:-1], memoryview(parts[-1])[:tail]])

    def _gather(self, first: int, last: int) -> list[bytes | memoryview]:
        found: dict[int, bytes | memoryview] = {}
        with self._lock:
            for index in range(first, last + 1):
                data = self._cache.get(index)
                if data is not None:
                    self._cache.move_to_end(index)
                    found[index] = data
            self._submit_missing((i for i in range(first, last + 1) if i not in found), None)
            waits = []
            for index in range(first, last + 1):
                if index in found:
                    continue
                hit = self._inflight.get(index)
                if hit is not None:
                    waits.append((index, *hit))
                elif index in self._cache:  # its fetch finished already and landed in the cache
                    found[index] = self._cache[index]
        for index, future, k in waits:
            found[index] = future.result()[k]
        for index in range(first, last + 1):
            if index not in found:  # landed and was evicted at once by concurrent reads: rare
                found[index] = self._fetch(index, 1)[0]
        return [found[i] for i in range(first, last + 1)]

    def _submit_missing(self, indexes: Iterable[int], budget: int | None) -> None:
        """Fetch, in spans of consecutive chunks, those of ``indexes`` neither cached nor in flight;
        stop after ``budget`` bytes (read-ahead). Called with the lock held."""
        span: list[int] = []
        span_bytes = 0
        total = 0
        for index in indexes:
            if budget is not None and total >= budget:
                break
            size = self.entry.chunks[index].size
            total += size
            if index in self._cache or index in self._inflight:
                self._flush(span)
                span, span_bytes = [], 0
                continue
            if span and (span[-1] != index - 1 or span_bytes + size > _SPAN_BYTES):
                self._flush(span)
                span, span_bytes = [], 0
            span.append(index)
            span_bytes += size
        self._flush(span)

    def _flush(self, span: list[int]) -> None:
        if not span:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="datarun-read")
        future = self._pool.submit(self._fetch, span[0], len(span))
        for k, index in enumerate(span):
            self._inflight[index] = (future, k)
        future.add_done_callback(lambda done: self._landed(span, done))

    def _fetch(self, first: int, count: int) -> list[bytes | memoryview]:
        out = self.client.read_chunks(self.entry, first, count)
        with self._stats_lock:
            self.fetched_bytes += sum(len(data) for data in out)
        return out

    def _landed(self, span: list[int], future: Future[list[bytes | memoryview]]) -> None:
        with self._lock:
            for index in span:
                self._inflight.pop(index, None)
            if future.cancelled() or future.exception() is not None:
                return  # the waiting read raises it; a later read fetches again
            for index, data in zip(span, future.result(), strict=True):
                self._remember(index, data)

    def _remember(self, index: int, data: bytes | memoryview) -> None:
        if index in self._cache:
            return
        self._cache[index] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)


def open_url(
    url: str | BundleURL,
    mode: str = "rb",
    *,
    client: Client | None = None,
    store: str | None = None,
    encoding: str | None = None,
) -> IO[Any]:
    """``datarun.open``: one file of a bundle, for reading; see :func:`datarun.open`."""
    if mode not in ("rb", "r", "rt"):
        raise UsageError(f"mode `{mode}` is not supported: bundles are read-only; use `rb` or `r`")
    target = url if isinstance(url, BundleURL) else parse_url(url)
    own = client is None
    conn = client if client is not None else connect(store)
    try:
        bundle = resolve_ref(conn, target.repo, target.ref)
        entry = conn.find_file(bundle, target.path) if target.path else None
        if entry is None or entry.kind != FILE:
            raise UsageError(f"`{target}` is a folder, not a file; name a file inside the bundle")
    except BaseException:
        if own:
            conn.close()
        raise
    raw = _OwningReader(conn, entry, own, str(target))
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    if mode == "rb":
        return buffered
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8")


class _OwningReader(BundleReader):
    """Closes the client it was given when it made one itself."""

    def __init__(self, client: Client, entry: FileEntry, owns: bool, name: str) -> None:
        super().__init__(client, entry, name=name)
        self._owns = owns

    def close(self) -> None:
        if not self.closed and self._owns:
            self.client.close()
        super().close()
