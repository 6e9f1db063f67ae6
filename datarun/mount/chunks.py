"""Fetching, verifying and caching chunks for the mount.

Two byte-bounded LRU tiers: memory (hot chunks) and a disk folder (survives remounts).
Every chunk's BLAKE3 is checked before its bytes are served, from the store or from disk, so
neither a corrupt pack nor a damaged cache file can reach a reader. Concurrent requests for
the same chunk share one fetch; read-ahead uses the same path, bounded by a thread pool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import secrets
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from datarun.cas.chunker import digest
from datarun.cas.packs import decode_chunk
from datarun.cas.reader import read_chunk
from datarun.errors import IntegrityError, StoreError
from datarun.layout import pack_key
from datarun.model import ChunkRef
from datarun.store import ObjectStore

log = logging.getLogger("datarun.mount")


@dataclass
class FetchStats:
    """Counters the benchmarks read: what came from where."""

    store_requests: int = 0
    store_bytes: int = 0
    memory_hits: int = 0
    disk_hits: int = 0


class _MemoryLRU:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: bytes, data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self.used += len(data)
            while self.used > self.budget:
                _, old = self._items.popitem(last=False)
                self.used -= len(old)


class _DiskLRU:
    """Chunks as files named by digest; recency is the file's mtime, refreshed on hit."""

    def __init__(self, folder: Path, budget: int) -> None:
        self.folder = folder
        self.budget = budget
        folder.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in os.scandir(folder):
            if entry.is_file() and len(entry.name) == 64:
                st = entry.stat()
                found.append((st.st_mtime_ns, entry.name, st.st_size))
            elif entry.name.startswith(".tmp-"):
                Path(entry.path).unlink(missing_ok=True)
        found.sort()
        self._items: OrderedDict[str, int] = OrderedDict((name, size) for _, name, size in found)
        self.used = sum(self._items.values())
        self._lock = threading.Lock()
        self._evict()

    def _evict(self) -> None:
        while self.used > self.budget and self._items:
            name, size = self._items.popitem(last=False)
            self.used -= size
            (self.folder / name).unlink(missing_ok=True)

    def get(self, key: bytes) -> bytes | None:
        name = key.hex()
        with self._lock:
            if name not in self._items:
                return None
            self._items.move_to_end(name)
        path = self.folder / name
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError as err:  # gone, replaced by a folder, unreadable: a miss, never a failed read
            if not isinstance(err, FileNotFoundError):
                log.warning("chunk cache: cannot read %s: %s; fetching it again", name[:16], err)
                with self._lock:
                    size = self._items.pop(name, None)
                    if size is not None:
                        self.used -= size
            return None
        return data

    def put(self, key: bytes, data: bytes) -> None:
        if self.budget <= 0 or len(data) > self.budget:
            return
        name = key.hex()
        with self._lock:
            if name in self._items:
                return
        tmp = self.folder / f".tmp-{secrets.token_hex(6)}"
        try:
            tmp.write_bytes(data)
            tmp.replace(self.folder / name)
        except OSError as err:  # e.g. a folder squats on the name  # a full cache disk must not fail reads
            tmp.unlink(missing_ok=True)
            log.warning("chunk cache: cannot write %s: %s", name[:16], err)
            return
        with self._lock:
            self._items[name] = len(data)
            self.used += len(data)
            self._evict()

    def discard(self, key: bytes) -> None:
        name = key.hex()
        with self._lock:
            size = self._items.pop(name, None)
            if size is not None:
                self.used -= size
        (self.folder / name).unlink(missing_ok=True)


class _MappedPacks:
    """Read-only maps of a local store's packs. A chunk is hash-checked on first use and then
    served as a slice of the map: no copy into Python memory, no zero-filled pages, no thread
    hop. The page cache does the caching a memory tier would otherwise do."""

    def __init__(self, store: ObjectStore, budget: int = 64) -> None:
        self.store = store
        self.budget = budget
        self._maps: OrderedDict[str, tuple[mmap.mmap, int]] = OrderedDict()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def _map(self, pack: str) -> tuple[mmap.mmap, int]:
        with self._lock:
            found = self._maps.get(pack)
            if found is not None:
                self._maps.move_to_end(pack)
                return found
        path = self.store.local_path(pack_key(pack))
        assert path is not None, "packs are mapped only from stores that are folders on this machine"
        fd = -1
        try:
            fd = os.open(path, os.O_RDONLY)
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            # Readers of a bundle mostly stream: sequential read-ahead on faults, measured faster
            # for an evicted pack than the default read-around or a MADV_WILLNEED per chunk.
            with contextlib.suppress(OSError):
                mapped.madvise(mmap.MADV_SEQUENTIAL)
        except FileNotFoundError:
            if fd >= 0:
                os.close(fd)
            raise IntegrityError(f"pack {pack[:16]} is missing from the store") from None
        except (OSError, ValueError) as err:
            if fd >= 0:
                os.close(fd)
            raise StoreError(f"store `{self.store.url}`: cannot map pack {pack[:16]}: {err}") from None
        with self._lock:
            self._maps[pack] = (mapped, fd)
            while len(self._maps) > self.budget:
                old_map, old_fd = self._maps.popitem(last=False)[1]
                with contextlib.suppress(BufferError):
                    old_map.close()
                os.close(old_fd)
        return mapped, fd

    def verified(self, ref: ChunkRef) -> bool:
        return ref.digest in self._verified

    def view(self, ref: ChunkRef) -> memoryview:
        mapped, fd = self._map(ref.pack)
        # Check the file's size now, not the map's: touching a page past the end of a pack that
        # was cut after mapping raises SIGBUS, which would kill the whole mount instead of
        # failing one read with EIO.
        end = ref.offset + ref.stored_size
        if end > len(mapped) or end > os.fstat(fd).st_size:
            raise IntegrityError(f"chunk {ref.digest.hex()[:16]} lies past the end of pack {ref.pack[:16]}")
        frame = memoryview(mapped)[ref.offset : ref.offset + ref.stored_size]
        if ref.digest not in self._verified:
            # Hashing is also what pages the frame in from disk; on a read-ahead worker that I/O
            # and the hash (blake3 releases the GIL) overlap with the reader being served.
            if digest(frame) != ref.digest:
                raise IntegrityError(f"chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} fails its hash check")
            with self._lock:
                self._verified.add(ref.digest)
        return frame

    def close(self) -> None:
        with self._lock:
            for mapped, fd in self._maps.values():
                with contextlib.suppress(BufferError):
                    mapped.close()
                os.close(fd)
            self._maps.clear()


class ChunkSource:
    """Get verified chunk bytes by ref: memory, then disk, then the store."""

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path | None,
        memory_bytes: int = 256 << 20,
        disk_bytes: int = 4 << 30,
        workers: int = 8,
    ) -> None:
        self.store = store
        self.memory = _MemoryLRU(memory_bytes)
        # A store that is a folder here already is a disk: its raw chunks are served from mapped
        # packs, and caching chunks on disk again would only cost writes.
        local = store.local_path() is not None
        self.disk = _DiskLRU(cache_dir, disk_bytes) if cache_dir is not None and disk_bytes > 0 and not local else None
        self.stats = FetchStats()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datarun-mount")
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._checking: dict[bytes, Future[None]] = {}  # mapped chunks being hash-checked
        self._lock = threading.Lock()
        self.mapped = _MappedPacks(store) if local else None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.mapped is not None:
            self.mapped.close()

    def view(self, ref: ChunkRef) -> memoryview | None:
        """The fast path for local stores: a verified slice of a mapped pack, or None when the
        chunk is compressed (those go through get() and the memory cache). Blocks while the
        chunk is checked, sharing a read-ahead check already under way."""
        if self.mapped is None or ref.compressed:
            return None
        if not self.mapped.verified(ref):
            self._check_future(ref).result()
        return self.mapped.view(ref)

    def view_now(self, ref: ChunkRef) -> memoryview | None:
        """The slice of a mapped pack if this chunk was checked already, without waiting: the
        mount's event loop serves those inline and hands the rest to a thread."""
        if self.mapped is None or ref.compressed or not self.mapped.verified(ref):
            return None
        return self.mapped.view(ref)

    def _check(self, ref: ChunkRef) -> None:
        assert self.mapped is not None
        self.mapped.view(ref)
        with self._lock:
            self.stats.store_requests += 1

    def _check_future(self, ref: ChunkRef) -> Future[None]:
        with self._lock:
            future = self._checking.get(ref.digest)
            if future is not None:
                return future
            future = self._pool.submit(self._check, ref)
            self._checking[ref.digest] = future
        # Outside the lock, for the reason given in _future.
        future.add_done_callback(lambda _f: self._check_done(ref.digest))
        return future

    def _check_done(self, key: bytes) -> None:
        with self._lock:
            self._checking.pop(key, None)

    def _from_store(self, ref: ChunkRef) -> bytes:
        # No retry loop here: the store's own (store/retry.py) is the only one, and a missing
        # pack is an answer, not an accident. A reader gets EIO in seconds, never a hang.
        data = read_chunk(self.store, ref)
        with self._lock:
            self.stats.store_requests += 1
            self.stats.store_bytes += ref.stored_size
        if self.disk is not None:
            self.disk.put(ref.digest, data)
        return data

    def _load(self, ref: ChunkRef) -> bytes:
        if self.disk is not None:
            data = self.disk.get(ref.digest)
            if data is not None:
                try:
                    decode_chunk(ChunkRef(ref.digest, ref.pack, 0, len(data), ref.size, False), data)
                    with self._lock:
                        self.stats.disk_hits += 1
                    return data
                except IntegrityError:
                    log.warning("chunk cache: %s damaged on disk; fetching it again", ref.digest.hex()[:16])
                    self.disk.discard(ref.digest)
        return self._from_store(ref)

    def _future(self, ref: ChunkRef) -> Future[bytes]:
        with self._lock:
            future = self._inflight.get(ref.digest)
            if future is not None:
                return future
            future = self._pool.submit(self._load, ref)
            self._inflight[ref.digest] = future
        # Outside the lock: a future that is already done (a fast failure, say) runs _done right
        # here, and _done takes the lock.
        future.add_done_callback(functools.partial(self._done, ref.digest))
        return future

    def _done(self, digest: bytes, future: Future[bytes]) -> None:
        with self._lock:
            self._inflight.pop(digest, None)
        if not future.cancelled() and future.exception() is None:
            self.memory.put(digest, future.result())

    def get(self, ref: ChunkRef) -> bytes:
        """Blocking: the verified bytes of ``ref`` (raises IntegrityError/StoreError)."""
        data = self.memory.get(ref.digest)
        if data is not None:
            with self._lock:
                self.stats.memory_hits += 1
            return data
        return self._future(ref).result()

    def prefetch(self, refs: list[ChunkRef]) -> None:
        if self.mapped is not None:
            # Raw chunks of a local pack are checked ahead on the pool, in parallel: each check
            # pages its frame in and hashes it, so the reader finds it verified and resident.
            for ref in refs:
                if not ref.compressed and not self.mapped.verified(ref):
                    self._check_future(ref)
            refs = [r for r in refs if r.compressed]
        for ref in refs:
            if self.memory.get(ref.digest) is None:
                self._future(ref)
