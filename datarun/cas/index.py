"""The chunk index: which chunks the store already has, and where.

The source of truth is the store's ``index/<pack>`` segments. Each machine caches them in
SQLite (one file per store URL) so that dedup lookups are local and cheap. ``sync`` lists the
segments, fetches the ones it has not seen, and forgets the ones that vanished from the
store, so a wiped or garbage-collected store can never make an upload point at missing packs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

from datarun.cas.packs import decode_segment
from datarun.errors import IntegrityError, ObjectNotFound
from datarun.layout import INDEX_PREFIX, segment_key, segment_name
from datarun.model import ChunkRef
from datarun.store import ObjectStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS chunks (
    digest BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
    stored INTEGER NOT NULL, size INTEGER NOT NULL, flags INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks(pack);
"""


class ChunkIndex:
    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        cache_dir.mkdir(parents=True, exist_ok=True)
        name = blake3.blake3(store.url.encode()).hexdigest()[:24]
        self.path = cache_dir / f"chunks-{name}.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._warm: dict[bytes, ChunkRef] = {}
        self._prefixes: set[bytes] | None = None
        # The prefix filter is built on the first lookup that misses the warm map: an unchanged
        # re-upload finds every chunk warm and so never pays for reading every digest in the index.
        self._filter_limit: int | None = None

    def close(self) -> None:
        self._db.close()

    def sync(self, workers: int = 8) -> int:
        """Bring the cache in line with the store; returns how many segments were fetched."""
        listed = {segment_name(info.key) for info in self.store.list(INDEX_PREFIX)}
        with self._lock:
            known = {row[0] for row in self._db.execute("SELECT name FROM segments")}
        gone = known - listed
        missing = sorted(listed - known)

        def fetch(name: str) -> tuple[str, list[ChunkRef] | None, bool]:
            try:
                data, _ = self.store.read(segment_key(name))
            except ObjectNotFound:
                # A gc swept it between the listing and this read: as if it had not been listed.
                return name, None, False
            try:
                return name, decode_segment(name, data), True
            except IntegrityError:
                # A corrupt segment only costs dedup; its pack is then simply not reused.
                return name, None, True

        fetched: list[tuple[str, list[ChunkRef] | None, bool]] = []
        if missing:
            with ThreadPoolExecutor(max_workers=min(workers, len(missing))) as pool:
                fetched = list(pool.map(fetch, missing))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for name in gone:
                    self._db.execute("DELETE FROM chunks WHERE pack = ?", (name,))
                    self._db.execute("DELETE FROM segments WHERE name = ?", (name,))
                for name, refs, present in fetched:
                    if refs is not None:
                        self._insert(refs)
                    if present:
                        self._db.execute("INSERT OR IGNORE INTO segments VALUES (?)", (name,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(missing)

    def _insert(self, refs: Iterable[ChunkRef]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
            ((r.digest, r.pack, r.offset, r.stored_size, r.size, int(r.compressed)) for r in refs),
        )

    def add_segment(self, pack_id: str, refs: list[ChunkRef]) -> None:
        """Record a segment this process just wrote, so later lookups need no sync."""
        with self._lock:
            if self._prefixes is not None:
                self._prefixes.update(r.digest[:8] for r in refs)
            self._db.execute("BEGIN IMMEDIATE")
            self._insert(refs)
            self._db.execute("INSERT OR IGNORE INTO segments VALUES (?)", (pack_id,))
            self._db.execute("COMMIT")

    def warm(self, digests: list[bytes], filter_limit: int = 500_000) -> None:
        """Batch-load ``digests`` into an in-memory map so the lookups that follow are free,
        and (for indexes up to ``filter_limit`` chunks) keep a set of 8-byte digest prefixes so
        a lookup of a chunk the store lacks, the common case on a first upload, skips SQLite."""
        found: dict[bytes, ChunkRef] = {}
        with self._lock:
            self._prefixes = None
            self._filter_limit = filter_limit
            for start in range(0, len(digests), 900):
                batch = digests[start : start + 900]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(
                    f"SELECT digest, pack, offset, stored, size, flags FROM chunks WHERE digest IN ({marks})",  # noqa: S608 - placeholders only
                    batch,
                )
                for row in rows:
                    found[row[0]] = ChunkRef(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
        self._warm = found

    def _build_filter(self, limit: int) -> None:
        with self._lock:
            if self._filter_limit is None:  # another thread built it meanwhile
                return
            (count,) = self._db.execute("SELECT count(*) FROM chunks").fetchone()
            self._prefixes = (
                {row[0][:8] for row in self._db.execute("SELECT digest FROM chunks")} if count <= limit else None
            )
            self._filter_limit = None

    def lookup(self, digest: bytes) -> ChunkRef | None:
        warm = self._warm.get(digest)
        if warm is not None:
            return warm
        if self._filter_limit is not None:
            self._build_filter(self._filter_limit)
        if self._prefixes is not None and digest[:8] not in self._prefixes:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT pack, offset, stored, size, flags FROM chunks WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            return None
        return ChunkRef(digest, row[0], row[1], row[2], row[3], bool(row[4]))

    def chunk_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
