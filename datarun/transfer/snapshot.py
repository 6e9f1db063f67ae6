"""The stat-only pass: knowing that a folder is unchanged since its last upload without reading it.

Like git's index, an upload remembers the ``lstat`` of every entry it stored (device, inode,
mode, size, mtime_ns, ctime_ns) and the tree's listing, here folded into one BLAKE3 digest of
the whole walk. The next upload of the same folder to the same store walks and stats the tree
again; if the digest is equal, the manifest it would write is the one already stored, so no
file is opened, no chunk is hashed or looked up, and only the bundle record is new. The cost of
"nothing changed" is one ``scandir`` per folder and one ``lstat`` per entry.

Any difference at all (a touched, added, deleted or renamed file, a recycled inode, whose ctime
differs) falls back to the full upload, whose per-file hash cache still skips unchanged files.

Racy entries, as git defines them: a file modified again in the same mtime tick as the stat the
upload took would look unchanged. A tree is therefore remembered only when every entry's mtime
is older than ``RACY_NS`` before the walk began; otherwise the next upload takes the full path,
which re-reads the young files (the hash cache refuses them too). A rewrite that puts an old
mtime back (``rsync -t``, ``cp -p``) still moves the ctime, which is compared exactly; like
git, a ctime is not tested for raciness, so that freshly copied trees with old mtimes qualify.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3
import orjson

from datarun.cas.chunker import CHUNKER_ID
from datarun.model import DIRECTORY, FILE, SYMLINK
from datarun.transfer.localfs import local_io_error

RACY_NS = 2_000_000_000  # 2 s: covers filesystems with coarse (1-2 s) timestamps, as the hash cache does
_FORMAT = 1
_ENTRY = struct.Struct(">BIQQQqqq")  # kind, mode, dev, ino, size, mtime_ns, ctime_ns, name length
_KINDS = {FILE: 1, DIRECTORY: 2, SYMLINK: 3}  # anything else (a fifo, a socket) folds as 0


class TreeFingerprint:
    """Folds the walk of one upload into a digest; fed every entry, in tree order."""

    def __init__(self) -> None:
        self._hash = blake3.blake3(b"datarun-tree-v1\0" + CHUNKER_ID.encode() + b"\0")
        self.started_ns = time.time_ns()
        self.racy = False

    def add(self, root: str, rel: str, st: os.stat_result, kind: str) -> None:
        name = rel.encode("utf-8", "surrogateescape")
        code = _KINDS.get(kind, 0)
        self._fold(code, st, name)
        if code == 3:
            # A link out of the folder is followed (`cp -L`): its target's stat is part of what
            # the bundle holds. A link inside is covered by its own entry and its target's.
            target = os.readlink(f"{root}/{rel}").encode("utf-8", "surrogateescape")
            self._hash.update(struct.pack(">I", len(target)) + target)
            try:
                self._fold(1, os.stat(f"{root}/{rel}"), b"")
            except OSError:
                self._hash.update(b"\0dangling")

    def _fold(self, code: int, st: os.stat_result, name: bytes) -> None:
        # Only a file's bytes can change under an unchanged stat: a folder's entries are in the
        # walk itself, and a symlink is never rewritten in place (its target is hashed in).
        if code == 1 and st.st_mtime_ns >= self.started_ns - RACY_NS:
            self.racy = True
        self._hash.update(_entry_bytes(code, st, name))

    def walk(self, root: str) -> None:
        """Fold the whole tree at ``root``: the entries ``walk_tree`` yields, in its order, each
        folded as ``add`` folds it, but hashed in batches and without a generator or a call per
        entry. An unchanged re-upload is this walk and little else, so its cost is the cost of
        "nothing changed"."""
        parts: list[bytes] = []
        young = self.started_ns - RACY_NS

        def visit(folder: str, rel: str) -> None:
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=_entry_name)
            except OSError as err:
                raise local_io_error(err, folder, "read folder") from None
            for entry in entries:
                path = rel + entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as err:
                    raise local_io_error(err, entry.path, "stat") from None
                mode = st.st_mode
                code = 2 if stat.S_ISDIR(mode) else 1 if stat.S_ISREG(mode) else 3 if stat.S_ISLNK(mode) else 0
                if code == 3:
                    self._hash.update(b"".join(parts))  # in order: the link's own fold comes next
                    parts.clear()
                    self.add(root, path, st, SYMLINK)
                    continue
                if code == 1 and st.st_mtime_ns >= young:
                    self.racy = True
                name = path.encode("utf-8", "surrogateescape")
                parts.append(_entry_bytes(code, st, name))
                if len(parts) >= 4096:
                    self._hash.update(b"".join(parts))
                    parts.clear()
                if code == 2:
                    visit(entry.path, path + "/")

        visit(root, "")
        self._hash.update(b"".join(parts))

    def hexdigest(self) -> str:
        return str(self._hash.hexdigest())


def _entry_bytes(code: int, st: os.stat_result, name: bytes) -> bytes:
    """One entry as the tree digest folds it: the one definition both walks use."""
    return (
        _ENTRY.pack(
            code, stat.S_IMODE(st.st_mode), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, len(name)
        )
        + name
    )


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


@dataclass(frozen=True, slots=True)
class TreeRecord:
    """What the last upload of one folder to one store produced, and the tree it saw."""

    tree: str  # TreeFingerprint digest
    manifest: str
    file_count: int
    total_size: int
    generation: int  # the store's gc generation then: after a sweep the manifest's packs may be gone
    files: int
    directories: int
    symlinks: int
    chunks: int


class TreeCache:
    """``trees/<key>.json`` in the client cache, one small file per (store, folder)."""

    def __init__(self, cache_dir: Path, store_url: str, root: Path) -> None:
        self.root = str(root.absolute())
        key = blake3.blake3(f"{store_url}\0{self.root}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.folder = cache_dir / "trees"
        self.path = self.folder / f"{key}.json"
        self._store_url = store_url

    def fingerprint(self) -> TreeFingerprint:
        """Walk and stat the folder, reading no file; the same walk the upload takes."""
        fp = TreeFingerprint()
        fp.walk(self.root)
        return fp

    def load(self) -> TreeRecord | None:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None  # a cache: missing or damaged means "do the full upload"
        if (
            not isinstance(raw, dict)
            or raw.get("format") != _FORMAT
            or raw.get("store") != self._store_url
            or raw.get("root") != self.root
        ):
            return None
        try:
            return TreeRecord(**{k: raw[k] for k in TreeRecord.__dataclass_fields__})
        except (KeyError, TypeError):
            return None

    def save(self, fingerprint: TreeFingerprint, record: TreeRecord) -> None:
        """Remember ``record``, unless an entry was racy: then forget the folder instead."""
        if fingerprint.racy or record.tree != fingerprint.hexdigest():
            self.forget()
            return
        body = {"format": _FORMAT, "store": self._store_url, "root": self.root, **asdict(record)}
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs speed
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.urandom(4).hex()}")
            tmp.write_bytes(orjson.dumps(body))
            os.replace(tmp, self.path)

    def forget(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
