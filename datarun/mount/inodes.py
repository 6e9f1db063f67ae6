"""The inode table: a bundle's tree in SQLite, built while the manifest streams in.

Nothing here holds every entry in Python objects at once, so a 1,000,000-file bundle mounts
with flat memory. Inodes are assigned in manifest (tree) order, which makes a folder's
children a contiguous, increasing inode range: ``readdir`` resumes with ``inode > ?``.
The table is cached by manifest id, so remounting the same bundle skips the build.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from datarun.model import DIRECTORY, FILE, SYMLINK, ChunkRef, FileEntry

ROOT_INODE = 1
_BATCH = 20_000
_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE nodes (
    inode INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mode INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, target BLOB, chunks BLOB
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True, slots=True)
class Node:
    inode: int
    parent: int
    name: bytes
    kind: str
    size: int
    mode: int
    mtime_ns: int
    target: bytes

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY


class InodeTable:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._db.execute("PRAGMA query_only=1")
        # No mmap: mapped table pages would count towards the mount's RSS; reads go through the
        # page cache instead, which the kernel can reclaim.
        self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB of SQLite page cache
        self.file_count = int(self._meta("files"))
        self.total_size = int(self._meta("bytes"))
        self.node_count = int(self._meta("nodes"))

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else "0"

    @staticmethod
    def build(entries: Iterator[dict[str, Any]], path: Path, root_mtime_ns: int = 0) -> InodeTable:
        """Stream raw manifest records (tree order, paths already validated) into a fresh table
        at ``path``; atomic via rename. Chunk refs are stored as their JSON and validated when
        a file is opened (see ``chunks``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".build-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(_SCHEMA)
            db.execute("BEGIN")
            # Only folders need a path -> inode map (files never get children); folders are
            # a small fraction of entries, so this stays small even for huge bundles.
            folders: dict[str, int] = {"": ROOT_INODE}
            rows: list[tuple[object, ...]] = [
                (ROOT_INODE, ROOT_INODE, b"", DIRECTORY, 0, 0o755, root_mtime_ns, None, None)
            ]
            next_inode = ROOT_INODE + 1
            files = total = 0
            for raw in entries:
                entry_path: str = raw["p"]
                kind: str = raw["k"]
                parent_path, _, name = entry_path.rpartition("/")
                parent = folders.get(parent_path)
                if parent is None:  # a manifest without explicit folder entries
                    parent = ROOT_INODE
                    walked = ""
                    for part in parent_path.split("/"):
                        walked = f"{walked}/{part}" if walked else part
                        if walked not in folders:
                            folders[walked] = next_inode
                            rows.append((next_inode, parent, part.encode(), DIRECTORY, 0, 0o755, 0, None, None))
                            next_inode += 1
                        parent = folders[walked]
                if kind == DIRECTORY:
                    if entry_path in folders:
                        continue
                    folders[entry_path] = next_inode
                size = int(raw.get("s", 0)) if kind == FILE else 0
                chunks = orjson.dumps(raw["c"]) if kind == FILE else None
                target = str(raw["l"]).encode() if kind == SYMLINK else None
                mode = int(raw["m"]) & 0o7777
                rows.append((next_inode, parent, name.encode(), kind, size, mode, int(raw.get("t", 0)), target, chunks))
                next_inode += 1
                if kind == FILE:
                    files += 1
                    total += size
                if len(rows) >= _BATCH:
                    db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    rows.clear()
            db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("files", str(files)),
                    ("bytes", str(total)),
                    ("nodes", str(next_inode - 1)),
                    ("schema", str(_SCHEMA_VERSION)),
                ],
            )
            db.execute("COMMIT")
            # Built after the bulk insert: one sort instead of a b-tree update per row.
            db.execute("CREATE UNIQUE INDEX nodes_by_name ON nodes(parent, name)")
            db.execute("CREATE INDEX nodes_by_parent ON nodes(parent)")  # (parent, inode) order for readdir
        except BaseException:
            db.close()
            tmp.unlink(missing_ok=True)
            raise
        db.close()
        tmp.replace(path)
        return InodeTable(path)

    @staticmethod
    def open_cached(path: Path) -> InodeTable | None:
        if not path.exists():
            return None
        try:
            table = InodeTable(path)
            if table._meta("schema") != str(_SCHEMA_VERSION):
                table.close()
                return None
            return table
        except sqlite3.DatabaseError:
            return None

    def close(self) -> None:
        self._db.close()

    _SELECT = "SELECT inode, parent, name, kind, size, mode, mtime_ns, target FROM nodes"

    def _node(self, row: tuple[Any, ...] | None) -> Node | None:
        if row is None:
            return None
        inode, parent, name, kind, size, mode, mtime, target = row
        return Node(inode, parent, bytes(name), kind, size, mode, mtime, bytes(target) if target is not None else b"")

    def get(self, inode: int) -> Node | None:
        return self._node(self._db.execute(self._SELECT + " WHERE inode = ?", (inode,)).fetchone())

    def lookup(self, parent: int, name: bytes) -> Node | None:
        return self._node(self._db.execute(self._SELECT + " WHERE parent = ? AND name = ?", (parent, name)).fetchone())

    def children(self, parent: int, after: int, limit: int = 1000) -> list[Node]:
        rows = self._db.execute(
            self._SELECT + " WHERE parent = ? AND inode > ? AND inode != ? ORDER BY inode LIMIT ?",
            (parent, after, ROOT_INODE, limit),
        ).fetchall()
        return [n for n in (self._node(r) for r in rows) if n is not None]

    def chunks(self, inode: int) -> list[ChunkRef]:
        """The file's chunk refs, validated as strictly as FileEntry.from_json does."""
        row = self._db.execute(
            "SELECT name, size, mode, mtime_ns, chunks FROM nodes WHERE inode = ? AND kind = 'f'", (inode,)
        ).fetchone()
        if row is None or row[4] is None:
            return []
        entry = FileEntry.from_json(
            {
                "p": os.fsdecode(row[0]) or "x",
                "k": FILE,
                "s": row[1],
                "m": row[2],
                "t": row[3],
                "c": orjson.loads(row[4]),
            }
        )
        return list(entry.chunks)

    def subdir_count(self, inode: int) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM nodes WHERE parent = ? AND kind = 'd' AND inode != ?", (inode, ROOT_INODE)
        ).fetchone()
        return int(row[0])
