"""A seekable, read-only file over one file of a bundle, and ``datarun.open``.

Reads fetch only the chunks that overlap them (``Client.read_range``, each chunk hash-checked)
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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from datarun.errors import NotFoundError, UsageError
from datarun.fs.url import BundleURL, parse_url
from datarun.ids import is_ksuid
from datarun.model import FILE, Bundle, FileEntry
from datarun.repo import Client, connect

CACHE_BYTES = 64 << 20  # decoded chunks kept per open file
READAHEAD_BYTES = 16 << 20  # fetched ahead of a forward reader
_SPAN_BYTES = 8 << 20  # one read_range call fetches at most about this much


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
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[int, Future[list[bytes]]] = {}  # first chunk index -> span being fetched
        self._pending_span: dict[int, int] = {}  # first chunk index -> chunks in that span
        self._last_end = -1
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
        """``length`` bytes at ``start`` (short at the end of the file); the position is kept."""
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
            parts = [self._chunk(i, last) for i in range(first, last + 1)]
            if forward:
                self._read_ahead(last + 1)
        if len(parts) == 1:
            offset = start - self._starts[first]
            return parts[0][offset : offset + end - start]
        joined = b"".join(parts)
        offset = start - self._starts[first]
        return joined[offset : offset + end - start]

    def _chunk(self, index: int, last: int) -> bytes:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        for first, future in list(self._pending.items()):
            if first <= index < first + self._pending_span[first]:
                self._pending.pop(first)
                self._pending_span.pop(first)
                for k, data in enumerate(future.result()):
                    self._remember(first + k, data)
                return self._cache[index]
        # Fetch this chunk and, in the same request, the rest that the read needs.
        count = 1
        span = self.entry.chunks[index].size
        while index + count <= last and span < _SPAN_BYTES:
            span += self.entry.chunks[index + count].size
            count += 1
        for k, data in enumerate(self._fetch(index, count)):
            self._remember(index + k, data)
        return self._cache[index]

    def _fetch(self, first: int, count: int) -> list[bytes]:
        refs = self.entry.chunks[first : first + count]
        start = self._starts[first]
        blob = self.client.read_range(self.entry, start, sum(r.size for r in refs))
        out = []
        offset = 0
        for ref in refs:
            out.append(blob[offset : offset + ref.size])
            offset += ref.size
        with self._stats_lock:  # not self._lock: a reader holding it may be waiting on this fetch
            self.fetched_bytes += len(blob)
        return out

    def _remember(self, index: int, data: bytes) -> None:
        if index in self._cache:
            return
        self._cache[index] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    def _read_ahead(self, first: int) -> None:
        index, budget = first, READAHEAD_BYTES
        while index < len(self.entry.chunks) and budget > 0:
            if index in self._cache or any(f <= index < f + n for f, n in self._pending_span.items()):
                budget -= self.entry.chunks[index].size
                index += 1
                continue
            count, span = 0, 0
            while index + count < len(self.entry.chunks) and span < _SPAN_BYTES and span < budget:
                if index + count in self._cache:
                    break
                span += self.entry.chunks[index + count].size
                count += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="datarun-readahead")
            self._pending[index] = self._pool.submit(self._fetch, index, count)
            self._pending_span[index] = count
            index += count
            budget -= span


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
