"""Manifests stream in tree order and are checked against their hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from datarun.errors import IntegrityError
from datarun.layout import manifest_key
from datarun.manifest import ManifestWriter, read_manifest, tree_key
from datarun.model import DIRECTORY, FileEntry
from datarun.store import MemoryStore


def test_tree_order_is_depth_first_with_sorted_names() -> None:
    paths = ["a-c", "a/b", "a", "b", "a/b/c"]
    assert sorted(paths, key=tree_key) == ["a", "a/b", "a/b/c", "a-c", "b"]


def _write(tmp_path: Path, store: MemoryStore, entries: list[FileEntry]) -> str:
    writer = ManifestWriter(tmp_path)
    for e in entries:
        writer.add(e)
    mid = writer.finish()
    store.put(manifest_key(mid), writer.path)
    return mid


def test_round_trip_of_many_entries(tmp_path: Path) -> None:
    store = MemoryStore()
    entries = [
        FileEntry(f"d{i // 100}", DIRECTORY) if i % 100 == 0 else FileEntry(f"d{i // 100}/f{i:05d}")
        for i in range(2000)
    ]
    entries.sort(key=lambda e: tree_key(e.path))
    mid = _write(tmp_path, store, entries)
    assert list(read_manifest(store, mid)) == entries


def test_writer_refuses_out_of_order_entries(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path)
    writer.add(FileEntry("b"))
    with pytest.raises(ValueError, match="out of order"):
        writer.add(FileEntry("a"))
    writer.discard()


def test_a_manifest_stored_under_the_wrong_id_is_detected(tmp_path: Path) -> None:
    store = MemoryStore()
    mid = _write(tmp_path, store, [FileEntry("a")])
    other = _write(tmp_path, store, [FileEntry("b")])
    store.put(manifest_key(mid), store.read(manifest_key(other))[0])
    with pytest.raises(IntegrityError, match="does not match its hash"):
        list(read_manifest(store, mid))


def test_garbage_manifest_is_an_integrity_error(tmp_path: Path) -> None:
    store = MemoryStore()
    store.put(manifest_key("ab" * 32), b"not zstd at all")
    with pytest.raises(IntegrityError):
        list(read_manifest(store, "ab" * 32))
