"""The stat-only pass of an unchanged re-upload (transfer.snapshot): when it may skip reading the
folder, and every way a change must make it read again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from datarun.model import FILE
from datarun.repo import Client
from datarun.results import UploadResult
from datarun.store import LocalStore
from datarun.transfer.snapshot import RACY_NS


def _age(root: Path, seconds: float = 60) -> None:
    """Move every mtime into the past, out of the racy window (the ctime stays: it is compared, not aged)."""
    past = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.utime(path, (past, past))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Client, Path]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 100)
    (src / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (src / "sub" / "c.txt").write_bytes(b"gamma")
    os.symlink("sub/c.txt", src / "link")
    _age(src)
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("r")
    return client, src


def _upload(client: Client, src: Path) -> UploadResult:
    return client.upload("r", src, "m")


def _contents(client: Client, result: UploadResult) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for entry in client.list_files(result.bundle):
        if entry.kind == FILE:
            chunks: list[bytes] = []
            client.stream_file(result.bundle, entry.path, chunks.append)
            out[entry.path] = b"".join(chunks)
    return out


def _stat_only(result: UploadResult) -> bool:
    """The stat-only pass answered (and then nothing was read, new or packed)."""
    s = result.stats
    if s.stat_only:
        assert s.bytes_read == 0 and s.chunks_new == 0 and s.packs == 0 and s.chunks_deduplicated > 0
    return s.stat_only


def test_unchanged_folder_is_recognised_without_opening_a_file(setup: tuple[Client, Path]) -> None:
    client, src = setup
    first = _upload(client, src)
    assert first.stats.bytes_read == first.stats.bytes_total > 0
    # Without the hash cache any pass that opens files would read them all: bytes_read says which ran.
    (client.cache_dir / "hashcache.sqlite").unlink()
    again = _upload(client, src)
    assert _stat_only(again)
    assert again.bundle.manifest == first.bundle.manifest and again.bundle.id != first.bundle.id
    assert again.stats.bytes_read == 0 and not (client.cache_dir / "hashcache.sqlite").exists(), "not even opened"
    assert (again.bundle.file_count, again.bundle.total_size) == (first.bundle.file_count, first.bundle.total_size)
    assert again.stats.files == first.stats.files and again.stats.directories == first.stats.directories


def test_a_touched_file_is_read_again(setup: tuple[Client, Path]) -> None:
    client, src = setup
    first = _upload(client, src)
    later = time.time() - 30
    os.utime(src / "a.txt", (later, later))
    again = _upload(client, src)
    assert not _stat_only(again)
    assert again.bundle.manifest != first.bundle.manifest, "the manifest records the new mtime"
    assert _contents(client, again)["a.txt"] == b"alpha\n" * 100


def test_same_size_same_mtime_rewrite_is_seen_through_the_ctime(setup: tuple[Client, Path]) -> None:
    """`rsync -t` style: new bytes, same size, old mtime put back; only the ctime moves."""
    client, src = setup
    _upload(client, src)
    target = src / "sub" / "c.txt"
    before = target.stat()
    time.sleep(0.02)  # past the ctime tick of the first upload's stat
    target.write_bytes(b"GAMMA")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_mtime_ns == before.st_mtime_ns and target.stat().st_size == before.st_size
    again = _upload(client, src)
    assert not _stat_only(again)
    assert _contents(client, again)["sub/c.txt"] == b"GAMMA"


def test_racy_file_is_not_trusted_by_the_next_upload(setup: tuple[Client, Path]) -> None:
    """A file whose mtime is within the racy window of the upload's walk may change again in the
    same tick without its stat showing it: the next upload must read it, not trust the record."""
    client, src = setup
    racy = src / "sub" / "c.txt"
    racy.write_bytes(b"young")
    young = racy.stat()
    assert time.time_ns() - young.st_mtime_ns < RACY_NS
    first = _upload(client, src)
    assert not (client.cache_dir / "trees").exists() or not any((client.cache_dir / "trees").iterdir()), (
        "a tree with a racy entry must not be remembered"
    )
    # Same size, same mtime and (on a coarse clock) possibly the same ctime: only its bytes differ.
    racy.write_bytes(b"YOUNG")
    os.utime(racy, ns=(young.st_atime_ns, young.st_mtime_ns))
    again = _upload(client, src)
    assert not _stat_only(again)
    assert _contents(client, again)["sub/c.txt"] == b"YOUNG"
    assert _contents(client, first)["sub/c.txt"] == b"young"
    # Once the file is old, the tree is remembered and the following upload is stat-only.
    _age(src)
    _upload(client, src)
    assert _stat_only(_upload(client, src))


def test_deleted_file_is_gone_from_the_new_bundle(setup: tuple[Client, Path]) -> None:
    client, src = setup
    _upload(client, src)
    (src / "a.txt").unlink()
    _age(src)  # the folder's mtime too: only the listing shows the change
    again = _upload(client, src)
    assert not _stat_only(again)
    assert "a.txt" not in {e.path for e in client.list_files(again.bundle)}


def test_renamed_file_is_listed_under_its_new_name(setup: tuple[Client, Path]) -> None:
    client, src = setup
    _upload(client, src)
    os.rename(src / "a.txt", src / "z.txt")  # same inode, size, mtime and ctime... but not the name
    _age(src)
    again = _upload(client, src)
    paths = {e.path for e in client.list_files(again.bundle)}
    assert "z.txt" in paths and "a.txt" not in paths
    assert _contents(client, again)["z.txt"] == b"alpha\n" * 100


def test_inode_reuse_with_same_name_size_and_mtime_is_read_again(setup: tuple[Client, Path]) -> None:
    client, src = setup
    _upload(client, src)
    old = (src / "a.txt").stat()
    (src / "a.txt").unlink()
    replacement = b"ALPHA\n" * 100
    (src / "a.txt").write_bytes(replacement)  # the freed inode is commonly handed out again
    os.utime(src / "a.txt", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))
    again = _upload(client, src)
    assert not _stat_only(again)
    assert _contents(client, again)["a.txt"] == replacement


def test_the_record_is_not_reused_for_another_store_or_after_the_manifest_is_gone(
    setup: tuple[Client, Path], tmp_path: Path
) -> None:
    client, src = setup
    first = _upload(client, src)
    other = Client(LocalStore(tmp_path / "other"), cache_dir=client.cache_dir)
    other.create_repo("r")
    elsewhere = other.upload("r", src, "m")
    assert elsewhere.stats.chunks_new > 0, "a record of another store proves nothing about this one"
    # A store wiped and recreated at the same URL: the manifest the record names is gone.
    manifest = next((tmp_path / "store" / "manifests").rglob(f"{first.bundle.manifest}*"))
    manifest.unlink()
    again = _upload(client, src)
    assert not _stat_only(again)
    assert _contents(client, again)["a.txt"] == b"alpha\n" * 100


def test_the_batched_walk_folds_exactly_what_the_upload_walk_folds(tmp_path: Path) -> None:
    """The re-upload's check (TreeFingerprint.walk) and the upload's own walk (walk_tree, add per
    entry) must agree on every kind of entry, or an unchanged folder would never be skipped."""
    from datarun.transfer.localfs import walk_tree
    from datarun.transfer.snapshot import TreeFingerprint

    root = tmp_path / "tree"
    for i in range(30):
        folder = root / f"d{i % 3}" / f"e{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:03d}.bin").write_bytes(os.urandom(i * 10))
    (root / "Zed").write_bytes(b"upper case sorts first")
    (root / "ünïcode.txt").write_bytes(b"non-ascii name")
    os.symlink("d0/e0/f000.bin", root / "inside")
    os.symlink(str(tmp_path / "outside.txt"), root / "outside")
    (tmp_path / "outside.txt").write_bytes(b"followed")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "pipe")
    (root / "empty-dir").mkdir()
    per_entry = TreeFingerprint()
    for rel, st, kind in walk_tree(root):
        per_entry.add(str(root), rel, st, kind)
    batched = TreeFingerprint()
    batched.walk(str(root))
    assert batched.hexdigest() == per_entry.hexdigest()
    (root / "d1" / "e1" / "f006.bin").write_bytes(b"changed")
    again = TreeFingerprint()
    again.walk(str(root))
    assert again.hexdigest() != per_entry.hexdigest(), "a rewritten file changes the digest"
