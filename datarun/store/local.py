"""The embedded default backend: a folder on a local or network filesystem.

Durability follows the usual recipe: write to a temp file in the same filesystem, fsync it,
rename it into place, fsync the directory. Create-only uses ``link(2)``, which fails
atomically if the target exists; compare-and-swap takes an ``flock`` on a per-key lock file
so that readers never block and writers serialise only per key.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import blake3

from datarun.errors import ObjectNotFound, PreconditionFailed, StoreError
from datarun.store.base import ObjectInfo, ObjectStore, Payload, check_folder_prefix, validate_key

_T = TypeVar("_T")
_RESERVED = (".tmp", ".locks")


def _etag(st: os.stat_result) -> str:
    # Every write is a rename of a fresh file, so (inode, mtime, size) changes on every write
    # without hashing large packs just to answer head().
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    backend_name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"
        self._tmp = self.root / ".tmp"
        self._locks = self.root / ".locks"

    # -- helpers -------------------------------------------------------------------------

    def _guard(self, key: str, action: str, fn: Callable[[], _T], *, reading: bool = True) -> _T:
        # ENOENT means "no such object" only when reading; when writing it means the store's
        # folder cannot be created, which is a store problem.
        try:
            return fn()
        except (ObjectNotFound, PreconditionFailed):
            raise
        except FileNotFoundError as err:
            if reading:
                raise ObjectNotFound(self.url, key) from None
            raise StoreError(self._describe(err, key, action)) from None
        except OSError as err:
            raise StoreError(self._describe(err, key, action)) from None

    def _describe(self, err: OSError, key: str, action: str) -> str:
        hint = {
            errno.ENOSPC: "free some space or point --store at another disk",
            errno.EDQUOT: "free some space or raise the quota",
            errno.EACCES: f"check the permissions of `{self.root}`",
            errno.EPERM: f"check the permissions of `{self.root}`",
            errno.EROFS: "the store's filesystem is read-only; choose a writable --store",
            errno.ENOENT: "check that the store's folder can be created",
        }.get(err.errno or 0, "check the store folder")
        return f"store `{self.url}`: cannot {action} `{key}`: {err.strerror or err}; {hint}"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] in _RESERVED:
            raise StoreError(f"key `{key}` is reserved by the local store")
        return self.root / key

    def local_path(self, key: str = "") -> Path:
        """Where ``key`` lives on disk: lets the mount map packs instead of copying them."""
        return self._path(key) if key else self.root

    def staging_dir(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp

    def _stage(self, payload: Payload) -> Path:
        """Put ``payload`` into a durable temp file in the store; reuse a spooled file if it
        already lives in our staging folder (the common case for packs)."""
        staging = self.staging_dir()
        if isinstance(payload, Path) and payload.parent == staging:
            with payload.open("rb+") as handle:
                os.fsync(handle.fileno())
            return payload
        tmp = staging / f"put-{os.urandom(8).hex()}"
        with tmp.open("wb") as out:
            if isinstance(payload, Path):
                with payload.open("rb") as src:
                    while block := src.read(4 << 20):
                        out.write(block)
            else:
                out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        self._locks.mkdir(parents=True, exist_ok=True)
        lock_path = self._locks / blake3.blake3(key.encode()).hexdigest()[:32]
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- primitives ----------------------------------------------------------------------

    def put(self, key: str, payload: Payload) -> ObjectInfo:
        target = self._path(key)

        def write() -> ObjectInfo:
            tmp = self._stage(payload)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            return ObjectInfo(key, *self._info(target))

        return self._guard(key, "write", write, reading=False)

    def put_if_absent(self, key: str, payload: Payload) -> ObjectInfo:
        target = self._path(key)

        def write() -> ObjectInfo:
            if target.exists():  # cheap early exit; link() below is the real arbiter
                raise PreconditionFailed(self.url, key, "it already exists")
            tmp = self._stage(payload)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise PreconditionFailed(self.url, key, "it already exists") from None
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(target.parent)
            return ObjectInfo(key, *self._info(target))

        return self._guard(key, "create", write, reading=False)

    def put_if_match(self, key: str, payload: Payload, etag: str) -> ObjectInfo:
        target = self._path(key)

        def write() -> ObjectInfo:
            tmp = self._stage(payload)
            try:
                with self._key_lock(key):
                    try:
                        current = _etag(target.stat())
                    except FileNotFoundError:
                        raise ObjectNotFound(self.url, key) from None
                    if current != etag:
                        raise PreconditionFailed(self.url, key, "it was changed by another writer")
                    os.replace(tmp, target)
                    _fsync_dir(target.parent)
                    return ObjectInfo(key, *self._info(target))
            finally:
                tmp.unlink(missing_ok=True)

        return self._guard(key, "update", write, reading=False)

    def _info(self, target: Path) -> tuple[int, str]:
        st = target.stat()
        return st.st_size, _etag(st)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        target = self._path(key)

        def load() -> tuple[bytes, ObjectInfo]:
            with target.open("rb") as handle:
                st = os.fstat(handle.fileno())
                data = handle.read()
            return data, ObjectInfo(key, st.st_size, _etag(st))

        return self._guard(key, "read", load)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        target = self._path(key)

        def load() -> bytes:
            fd = os.open(target, os.O_RDONLY)
            try:
                return os.pread(fd, length, start)
            finally:
                os.close(fd)

        return self._guard(key, "read", load)

    def head(self, key: str) -> ObjectInfo:
        target = self._path(key)
        return self._guard(key, "stat", lambda: ObjectInfo(key, *self._info(target)))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Walk only the deepest folder the prefix names, then filter and sort like a bucket.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        found: list[ObjectInfo] = []

        def walk(folder: Path, rel: str) -> None:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return
            except OSError as err:
                raise StoreError(self._describe(err, rel or "/", "list")) from None
            # A flat folder of 100k run changes is listed on every `run query`: drop, by name
            # alone, the entries that can hold no key under `prefix` after `start_after`, so
            # the loop below (key, is_dir, stat) only sees the few that can.
            entries = _by_name(entries, rel, prefix, start_after)
            for entry in entries:
                key = f"{rel}{entry.name}"
                if not rel and entry.name in _RESERVED:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        walk(Path(entry.path), key + "/")
                elif key.startswith(prefix) and (start_after is None or key > start_after):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    found.append(ObjectInfo(key, st.st_size, _etag(st)))

        walk(start, f"{base_dir}/" if base_dir else "")
        found.sort(key=lambda info: info.key)
        yield from found

    def list_folders(self, prefix: str) -> Iterator[str]:
        check_folder_prefix(prefix)
        folder = self.root / prefix if prefix else self.root
        try:
            entries = [e for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            raise StoreError(self._describe(err, prefix or "/", "list")) from None
        # Sorted with the slash: `a-z/` comes before `a/` in a bucket's byte order.
        yield from sorted(
            f"{prefix}{e.name}/" for e in entries if (prefix or e.name not in _RESERVED) and _holds_a_file(e.path)
        )

    def delete(self, key: str) -> None:
        target = self._path(key)
        self._guard(key, "delete", lambda: target.unlink(missing_ok=True))


def _holds_a_file(folder: str) -> bool:
    # Deleting a key leaves its folders behind; a folder with no file below holds no key.
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return False
    return any(not e.is_dir(follow_symlinks=False) for e in entries) or any(
        _holds_a_file(e.path) for e in entries if e.is_dir(follow_symlinks=False)
    )


def _by_name(entries: list[os.DirEntry[str]], rel: str, prefix: str, start_after: str | None) -> list[os.DirEntry[str]]:
    """The entries of folder ``rel`` whose name can start a key (a file's, or one inside a
    folder's) that is under ``prefix`` and after ``start_after``; the others are dropped.

    A key is ``rel + name + rest`` (``rest`` empty for a file). If ``name`` is not a prefix of
    ``tail`` (the bound's part after ``rel``) the two first differ inside ``name``, so the
    comparison is decided by ``name`` alone; if it is, the entry is kept for the exact test."""
    if prefix.startswith(rel):
        want = prefix[len(rel) :]
        if want:
            entries = [e for e in entries if e.name.startswith(want) or want.startswith(e.name)]
    if start_after is not None and start_after.startswith(rel):
        tail = start_after[len(rel) :]
        stems = {tail[:n] for n in range(len(tail) + 1)}  # a set lookup, not a call per entry
        entries = [e for e in entries if e.name > tail or e.name in stems]
    return entries
