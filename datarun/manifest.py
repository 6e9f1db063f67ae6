"""Manifests: a bundle's file list, streamed in and out so its size never sits in memory.

On the wire a manifest is a zstd stream of JSON lines: one header line, then one line per
entry in *tree order* (paths compared component by component, which is depth-first order
with each folder's names sorted). It is content-addressed by the BLAKE3 of its plaintext.
Readers validate every path, the ordering, and finally the hash.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import blake3
import orjson
import zstandard

from datarun.cas.chunker import CHUNKER_ID
from datarun.errors import IntegrityError, StoreError
from datarun.layout import manifest_key
from datarun.model import DIRECTORY, FILE, SYMLINK, FileEntry, validate_link_target, validate_relpath
from datarun.store import ObjectStore

_FORMAT = "datarun-manifest"
_VERSION = 1
_READ_BLOCK = 8 << 20


def tree_key(path: str) -> tuple[str, ...]:
    """Sort key giving tree order; diff and mount rely on both sides agreeing on it."""
    return tuple(path.split("/"))


class ManifestWriter:
    """Writes entries (already in tree order) to a compressed spool file."""

    def __init__(self, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.path = spool_dir / f"manifest-{os.urandom(8).hex()}"
        self._raw = self.path.open("wb")
        self._zstd = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        self._hasher = blake3.blake3()
        self._last: tuple[str, ...] | None = None
        self._block = bytearray()
        self.file_count = 0
        self.total_size = 0
        self._write({"format": _FORMAT, "version": _VERSION, "chunker": CHUNKER_ID})

    def _write(self, obj: object) -> None:
        # Lines are gathered into ~1 MiB blocks: one hash/compress call per block, not per line.
        self._block += orjson.dumps(obj)
        self._block += b"\n"
        if len(self._block) >= 1 << 20:
            try:
                self._flush_block()
            except OSError as err:
                raise StoreError(
                    f"cannot write manifest spool `{self.path}`: {err.strerror or err}; free some space"
                ) from None

    def _flush_block(self) -> None:
        self._hasher.update(self._block)
        self._zstd.write(self._block)
        self._block.clear()

    def add(self, entry: FileEntry) -> None:
        key = tree_key(entry.path)
        if self._last is not None and key <= self._last:
            raise ValueError(f"manifest entries out of order: {entry.path}")
        self._last = key
        self._write(entry.to_json())
        if entry.kind == "f":
            self.file_count += 1
            self.total_size += entry.size

    def finish(self) -> str:
        """Close the spool and return the manifest id (hash of the plaintext)."""
        try:
            self._flush_block()
            self._zstd.close()  # type: ignore[no-untyped-call]
            self._raw.close()
        except OSError as err:
            raise StoreError(
                f"cannot write manifest spool `{self.path}`: {err.strerror or err}; free some space"
            ) from None
        return str(self._hasher.hexdigest())

    def discard(self) -> None:
        # Called while another error propagates: a second failure (disk still full) must not
        # replace the first.
        with contextlib.suppress(OSError):
            self._zstd.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            self._raw.close()
        self.path.unlink(missing_ok=True)


class _RangeReader(io.RawIOBase):
    """A read-only stream over ``get_range`` calls, so any backend can stream an object."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._offset = 0
        self._size = store.head(key).size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._offset >= self._size:
            return 0
        want = min(len(buffer), _READ_BLOCK, self._size - self._offset)
        data = self._store.get_range(self._key, self._offset, want)
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)


def open_manifest_stream(store: ObjectStore, manifest_id: str) -> zstandard.ZstdDecompressionReader:
    raw = io.BufferedReader(_RangeReader(store, manifest_key(manifest_id)), buffer_size=_READ_BLOCK)
    return zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20)


def read_manifest(store: ObjectStore, manifest_id: str) -> Iterator[FileEntry]:
    """Stream a bundle's entries, validating paths, order and finally the manifest hash."""
    for raw in read_manifest_records(store, manifest_id):
        yield FileEntry.from_json(raw)


def read_manifest_records(store: ObjectStore, manifest_id: str) -> Iterator[dict[str, Any]]:
    """The raw entries, with path, kind, symlink target and order validated but chunk refs
    left as JSON. For consumers (the mount) that index millions of entries and decode a
    file's refs, with FileEntry.from_json-grade checks, only when the file is opened."""
    where = f"manifest {manifest_id[:16]}"
    hasher = blake3.blake3()
    last: tuple[str, ...] | None = None
    last_kind = DIRECTORY
    try:
        with open_manifest_stream(store, manifest_id) as stream:
            lines = io.BufferedReader(cast(io.RawIOBase, stream), buffer_size=1 << 20)
            header_line = lines.readline()
            hasher.update(header_line)
            header = orjson.loads(header_line)
            if header.get("format") != _FORMAT or header.get("version") != _VERSION:
                raise IntegrityError(f"{where} has unknown format {header!r}")
            for line in lines:
                hasher.update(line)
                raw = orjson.loads(line)
                try:
                    path = validate_relpath(raw["p"])
                    kind = raw["k"]
                    if kind == SYMLINK:
                        validate_link_target(path, raw["l"])
                    elif kind not in (FILE, DIRECTORY):
                        raise IntegrityError(f"{where}: entry `{path}` has unknown kind {kind!r}")
                except (KeyError, TypeError) as err:
                    raise IntegrityError(f"{where}: malformed entry {raw!r}: {err}") from None
                key = tree_key(path)
                if last is not None and key <= last:
                    raise IntegrityError(f"{where}: entry `{path}` is duplicated or out of order")
                # Tree order puts whatever lies under `a` right after `a`: if that is a file or a link,
                # an entry below it would be written or mounted through it.
                if last is not None and last_kind != DIRECTORY and key[: len(last)] == last:
                    what = "symlink" if last_kind == SYMLINK else "file"
                    raise IntegrityError(f"{where}: entry `{path}` lies inside `{'/'.join(last)}`, which is a {what}")
                last, last_kind = key, kind
                yield raw
    except (zstandard.ZstdError, orjson.JSONDecodeError) as err:
        raise IntegrityError(f"{where} is corrupt: {err}") from None
    if hasher.hexdigest() != manifest_id:
        raise IntegrityError(f"{where} is corrupt: its content does not match its hash")


@dataclass(frozen=True)
class DiffEntry:
    path: str
    change: str  # "added", "removed" or "modified"
    old: FileEntry | None
    new: FileEntry | None


def diff_entries(left: Iterator[FileEntry], right: Iterator[FileEntry]) -> Iterator[DiffEntry]:
    """Merge-join two manifests' entries in tree order; memory stays flat for any bundle size."""
    a = next(left, None)
    b = next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and tree_key(a.path) < tree_key(b.path)):
            assert a is not None
            yield DiffEntry(a.path, "removed", a, None)
            a = next(left, None)
        elif a is None or tree_key(b.path) < tree_key(a.path):
            yield DiffEntry(b.path, "added", None, b)
            b = next(right, None)
        else:
            if _content(a) != _content(b):
                yield DiffEntry(a.path, "modified", a, b)
            a = next(left, None)
            b = next(right, None)


def _content(entry: FileEntry) -> tuple[object, ...]:
    if entry.kind == FILE:
        return (entry.kind, entry.size, entry.mode, tuple(c.digest for c in entry.chunks))
    return (entry.kind, entry.mode, entry.target)


def find_entry(entries: Iterator[FileEntry], path: str) -> FileEntry | None:
    """The entry at ``path``, stopping as soon as tree order says it cannot come any more."""
    wanted = tree_key(path)
    for entry in entries:
        key = tree_key(entry.path)
        if key == wanted:
            return entry
        if key > wanted:
            break
    return None
