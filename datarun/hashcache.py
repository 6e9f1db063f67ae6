"""A local cache of file -> chunk digests, so re-uploading unchanged data reads nothing.

Keyed by absolute path and validated by (device, inode, size, mtime, ctime) plus the chunker
id. Like git's index it avoids the "racy" case: a file modified within the same timestamp
tick as the cache write could look unchanged, so entries younger than a few seconds are not
cached.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from pathlib import Path

from datarun.cas.chunker import CHUNKER_ID

_PAIR = struct.Struct(">32sI")
_RACY_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, chunker TEXT, chunks BLOB
) WITHOUT ROWID;
"""

Chunks = list[tuple[bytes, int]]


class HashCache:
    def __init__(self, cache_dir: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(cache_dir / "hashcache.sqlite", timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending: list[tuple[object, ...]] = []
        self._preloaded: dict[str, tuple[object, ...]] | None = None

    def preload(self, folder: str, limit: int = 200_000) -> list[bytes]:
        """Load every entry under ``folder`` in one query (a per-file query costs ~25 us,
        which dominates re-uploads of many small files). Returns the digests seen, so the
        caller can batch its own lookups. Skipped, returning [], for huge folders."""
        prefix = folder.rstrip("/") + "/"
        (count,) = self._db.execute(
            "SELECT count(*) FROM files WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0")
        ).fetchone()
        if count > limit:
            return []
        rows = self._db.execute(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, chunker, chunks FROM files WHERE path >= ? AND path < ?",
            (prefix, prefix[:-1] + "0"),
        )
        self._preloaded = {}
        digests: list[bytes] = []
        for row in rows:
            self._preloaded[row[0]] = row[1:]
            blob: bytes = row[7]
            digests.extend(blob[i : i + 32] for i in range(0, len(blob), _PAIR.size))
        return digests

    def get(self, path: str, st: os.stat_result) -> Chunks | None:
        row: tuple[object, ...] | None
        if self._preloaded is not None:
            row = self._preloaded.get(path)  # preloaded: a miss here is a miss in SQLite too
        else:
            row = self._db.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, chunker, chunks FROM files WHERE path = ?", (path,)
            ).fetchone()
        if row is None:
            return None
        if tuple(row[:6]) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, CHUNKER_ID):
            return None
        blob = row[6]
        assert isinstance(blob, bytes)
        return [_PAIR.unpack_from(blob, i) for i in range(0, len(blob), _PAIR.size)]

    def put(self, path: str, st: os.stat_result, chunks: Chunks) -> None:
        if time.time() - st.st_mtime_ns / 1e9 < _RACY_SECONDS:
            return
        blob = b"".join(_PAIR.pack(d, s) for d, s in chunks)
        self._pending.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, CHUNKER_ID, blob))
        if len(self._pending) >= 10_000:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._pending)
        self._db.execute("COMMIT")
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._db.close()
