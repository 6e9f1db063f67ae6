"""datamover: datamon's backup-and-prune tool, with unlink only after verification."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from datarun.cli.datamover_cmd import parse_timestamp
from datarun.errors import ExitCode, UsageError
from tests.cli.conftest import Env


def _share(root: Path) -> tuple[Path, Path, Path]:
    root.mkdir()
    old = root / "old.dat"
    new = root / "sub" / "new.dat"
    new.parent.mkdir()
    old.write_text("old")
    new.write_text("new")
    os.utime(old, (time.time() - 86400 * 10,) * 2)
    return root, old, new


def test_timestamp_formats_are_datamons_in_local_time() -> None:
    assert parse_timestamp("2006-Jan-02") == datetime(2006, 1, 2).timestamp()
    assert parse_timestamp("0601021504") == datetime(2006, 1, 2, 15, 4).timestamp()
    assert parse_timestamp("060102150405") == datetime(2006, 1, 2, 15, 4, 5).timestamp()
    with pytest.raises(UsageError, match="not understood"):
        parse_timestamp("yesterday")


def test_backup_lists_and_unlinks_only_verified_old_files(env: Env) -> None:
    env.ok("repo", "create", "--repo", "datamover")
    share, old, new = _share(env.tmp / "share")
    lists = env.tmp / "lists"
    cutoff = datetime.fromtimestamp(time.time() - 86400).strftime("%y%m%d%H%M%S")
    result = env.ok("datamover", "-d", str(share), "-t", cutoff, "-f", str(lists), "-u")
    bundle = result.last_line
    assert (lists / "upload.list").read_text().splitlines() == ["old.dat", "sub/new.dat"]
    assert (lists / "uploaded.list").read_text().splitlines() == ["old.dat", "sub/new.dat"]
    assert (lists / "removable.list").read_text().splitlines() == ["old.dat"]
    assert not old.exists() and new.exists()
    labels = env.ok("label", "list", "--repo", "datamover").out
    assert bundle in labels and "datamover-" in labels
    restored = env.tmp / "restored"
    env.ok("bundle", "download", "--repo", "datamover", "--bundle", bundle, "--destination", str(restored))
    assert (restored / "old.dat").read_text() == "old"


def test_the_boundary_is_strictly_older(env: Env) -> None:
    env.ok("repo", "create", "--repo", "datamover")
    share = env.tmp / "share"
    share.mkdir()
    edge = share / "edge.dat"
    edge.write_text("x")
    moment = datetime(2020, 5, 6, 7, 8, 9).timestamp()
    os.utime(edge, (moment, moment))
    lists = env.tmp / "l1"
    env.ok("datamover", "-d", str(share), "-t", "200506070809", "-f", str(lists))
    assert (lists / "removable.list").read_text() == "", "a file exactly at the cutoff is not older"
    lists2 = env.tmp / "l2"
    env.ok("datamover", "-d", str(share), "-t", "200506070810", "-f", str(lists2))
    assert (lists2 / "removable.list").read_text().splitlines() == ["edge.dat"]


def test_refuses_to_run_over_existing_lists(env: Env) -> None:
    env.ok("repo", "create", "--repo", "datamover")
    share, old, _ = _share(env.tmp / "share")
    lists = env.tmp / "lists"
    lists.mkdir()
    (lists / "uploaded.list").write_text("from a previous run\n")
    result = env.run("datamover", "-d", str(share), "-f", str(lists), "-u")
    assert result.code == ExitCode.CONFLICT and "uploaded.list already exist" in result.err
    assert old.exists()
