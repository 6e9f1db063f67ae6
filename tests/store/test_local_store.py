"""Local-backend specifics: durability mechanics the contract cannot see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datarun.errors import PreconditionFailed
from datarun.store import LocalStore, backend_for


def test_staged_pack_is_renamed_not_copied(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    spooled = store.staging_dir() / "pack-test"
    spooled.write_bytes(b"p" * 4096)
    inode = spooled.stat().st_ino
    store.put("packs/aa/x", spooled)
    assert not spooled.exists()
    assert (tmp_path / "s" / "packs" / "aa" / "x").stat().st_ino == inode


def test_failed_create_only_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_if_absent("k", b"1")
    for _ in range(3):
        with pytest.raises(PreconditionFailed):
            store.put_if_absent("k", b"2")
    assert os.listdir(store.staging_dir()) == []


def test_reserved_folders_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_if_absent("lbl", b"1")
    store.put_if_match("lbl", b"2", store.head("lbl").etag)
    assert [i.key for i in store.list("")] == ["lbl"]


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("/data/store", "local"),
        ("file:///data/store", "local"),
        ("memory://x", "memory"),
        ("az://container/prefix", "azure"),
        ("gs://bucket", "gcs"),
        ("s3://bucket", "s3"),  # unknown: shown as its scheme, as `config show` always did
    ],
)
def test_backend_for_names_the_backend_without_opening_the_store(url: str, backend: str) -> None:
    assert backend_for(url) == backend


def test_list_by_name_filter_gives_what_a_bucket_would(tmp_path: Path) -> None:
    """The name pre-filter in ``LocalStore.list`` drops nothing a bucket would list: every
    prefix and start_after cut from a set of keys with shared stems, folders named like files'
    prefixes and keys on both sides of each bound, against the brute-force answer."""
    store = LocalStore(tmp_path / "s")
    keys = [
        "runs/changes/2A",
        "runs/changes/2Ab",
        "runs/changes/2B",
        "runs/changes/3",
        "runs/changes/2A0/x",
        "runs/changes/2/y",
        "runs/snapshots/2A",
        "runs/c",
        "runs/changes-old/2A",
        "a/b/c",
        "ab",
        "a0",
    ]
    for key in keys:
        store.put_if_absent(key, b"1")
    cuts = sorted({key[:n] for key in keys for n in range(len(key) + 1)})
    for prefix in cuts:
        for start_after in [None, *cuts]:
            want = sorted(k for k in keys if k.startswith(prefix) and (start_after is None or k > start_after))
            got = [info.key for info in store.list(prefix, start_after=start_after)]
            assert got == want, (prefix, start_after)
