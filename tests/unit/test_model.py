"""Records, names, ids and path validation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from datarun.errors import IntegrityError, UnsafePathError, UsageError
from datarun.ids import is_ksuid, ksuid_time, new_ksuid
from datarun.model import (
    Bundle,
    BundleRef,
    FileEntry,
    Provenance,
    RunRecord,
    validate_label_name,
    validate_link_target,
    validate_relpath,
    validate_repo_name,
)


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/.",
        "",
        "a\\b",
        "a\x00b",
        "a/",
        "..",
        ".",
        "a/b/..",
        "x.y/../z",
    ],
)
def test_unsafe_manifest_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        validate_relpath(path)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "..hidden", "a/.config", "x y/z", "a.b/c.d", ".x/..y/z."])
def test_ordinary_paths_pass(path: str) -> None:
    assert validate_relpath(path) == path


def test_symlinks_must_stay_inside_the_bundle() -> None:
    assert validate_link_target("a/b", "../c") == "../c"
    for target in ["../../c", "/etc/passwd", "", "../../../x"]:
        with pytest.raises(UnsafePathError):
            validate_link_target("a/b", target)


def test_a_chain_of_links_cannot_climb_out() -> None:
    """With ``a/b -> ..``, ``c -> a/b/..`` is lexically ``a`` but really the bundle's parent."""
    assert validate_link_target("a/b", "..") == ".."
    for target in ["a/b/..", "a/../..", "x/..", "../a/../b"]:
        with pytest.raises(UnsafePathError, match=r"put every `\.\.` first"):
            validate_link_target("c", target)
    for fine in ["a/b", "./a", "../c/d", "a/./b"]:
        assert validate_link_target("x/y", fine) == fine


@pytest.mark.parametrize("name", ["bad/label", "..", "", "-x", "a" * 200, "a b"])
def test_bad_labels_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="invalid label"):
        validate_label_name(name)


@pytest.mark.parametrize("name", ["Upper", "a/b", "", "x" * 64])
def test_bad_repo_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="invalid repo"):
        validate_repo_name(name)


def test_manifest_entry_sizes_must_add_up() -> None:
    raw = {"p": "f", "k": "f", "m": 0o644, "t": 0, "s": 10, "c": [["00" * 32, "ab", 0, 5, 5, 0]]}
    with pytest.raises(IntegrityError, match="do not add up"):
        FileEntry.from_json(raw)
    raw["s"] = 5
    assert FileEntry.from_json(raw).size == 5


def test_bundle_record_round_trips_with_provenance() -> None:
    prov = Provenance(
        "Ada",
        "ada@example.org",
        "host1",
        (BundleRef("raw", new_ksuid()),),
        RunRecord("run-1", ("python", "train.py"), "img:1", 0, {"lr": "0.1"}),
    )
    bundle = Bundle(new_ksuid(), "repo", "msg", "2026-01-01T00:00:00Z", "ab" * 32, 3, 100, prov)
    assert Bundle.from_json(bundle.to_json()) == bundle


def test_ksuids_sort_by_time_even_within_one_second() -> None:
    base = time.time()
    ids = [new_ksuid(base + i * 0.001) for i in range(50)]
    assert ids == sorted(ids)
    assert all(is_ksuid(i) and len(i) == 27 for i in ids)
    assert abs(ksuid_time(ids[0]) - int(base)) <= 1


def test_stale_spool_files_from_killed_uploads_are_swept(tmp_path: Path) -> None:
    from datarun.bundle_upload import SPOOL_MAX_AGE, sweep_stale_spool

    old = tmp_path / "pack-dead"
    fresh = tmp_path / "pack-live"
    unrelated = tmp_path / "keep-me"
    for f in (old, fresh, unrelated):
        f.write_bytes(b"x")
    past = time.time() - SPOOL_MAX_AGE - 60
    os.utime(old, (past, past))
    os.utime(unrelated, (past, past))
    sweep_stale_spool(tmp_path)
    assert not old.exists()
    assert fresh.exists() and unrelated.exists()
