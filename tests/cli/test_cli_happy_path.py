"""The everyday CLI loop, checked byte for byte: what scripts parse and what users get back."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from datarun.cli.main import main
from datarun.errors import ExitCode
from datarun.ids import is_ksuid
from tests.cli.conftest import Env, Result

PAST_NS = 1_600_000_000_123_456_789  # a fixed past mtime with sub-second digits


def _upload(env: Env, src: Path, *extra: str) -> str:
    result = env.ok("bundle", "upload", "--path", str(src), "--message", "msg", "--repo", "r", *extra)
    bundle_id = result.last_line
    assert len(bundle_id) == 27 and is_ksuid(bundle_id), result.out
    return bundle_id


def _json_body(result: Result) -> Any:
    """Everything but the last stdout line (upload prints the JSON, then the bundle id)."""
    return json.loads("\n".join(result.out.strip().splitlines()[:-1]))


def _tree(root: Path) -> Path:
    """Files of several sizes and modes, nested and empty folders, internal symlinks, past mtimes."""
    (root / "a" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "x" / "y").mkdir(parents=True)  # nested empty folders
    (root / "private").mkdir()
    (root / "a" / "b.txt").write_bytes(b"hello b\n")
    (root / "a" / "c" / "deep.bin").write_bytes(os.urandom(5_000_000))  # > 4 MiB (max chunk): always several chunks
    (root / "a" / "zero.dat").write_bytes(b"")
    (root / "private" / "notes.txt").write_bytes(b"notes\n")
    script = root / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = root / "secret.key"
    secret.write_bytes(os.urandom(3000))
    secret.chmod(0o600)
    (root / "link").symlink_to("a/b.txt")
    (root / "a" / "up").symlink_to("../run.sh")
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    for i, path in enumerate(sorted(files)):
        os.utime(path, ns=(PAST_NS + i * 1_000_003, PAST_NS + i * 1_000_003))
    (root / "private").chmod(0o700)
    # Folders last and deepest first, so writing a child does not touch the parent's time.
    folders = sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts))
    for i, folder in enumerate(folders):
        os.utime(folder, ns=(PAST_NS - (i + 1) * 7_000_001, PAST_NS - (i + 1) * 7_000_001))
    return root


def _rel_paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_repo_create_upload_and_list(env: Env) -> None:
    src = _tree(env.tmp / "src")
    created = env.ok("repo", "create", "--repo", "r", "--description", "demo data")
    assert "created repo `r`" in created.err
    repos = env.ok("repo", "list").out.splitlines()
    assert len(repos) == 1 and repos[0].startswith("r , demo data , ")

    upload = env.ok("bundle", "upload", "--path", str(src), "--message", "first cut", "--repo", "r")
    bundle_id = upload.last_line
    assert len(bundle_id) == 27 and is_ksuid(bundle_id)
    assert upload.out == bundle_id + "\n", "without --json, stdout is only the bundle id"

    listed = env.ok("bundle", "list", "--repo", "r").out.splitlines()
    assert len(listed) == 1
    listed_id, created_at, message = listed[0].split(" , ")
    assert listed_id == bundle_id and message == "first cut" and created_at.endswith("Z")

    lines = env.ok("bundle", "list", "files", "--repo", "r", "--bundle", bundle_id).out.splitlines()
    expected_files = {
        "a/b.txt": 8,
        "a/c/deep.bin": 5_000_000,
        "a/zero.dat": 0,
        "private/notes.txt": 6,
        "run.sh": 18,
        "secret.key": 3000,
    }
    expected = [f"{path} , {size}" for path, size in expected_files.items()]
    expected += ["a/up -> ../run.sh", "link -> a/b.txt"]
    assert sorted(lines) == sorted(expected)
    # Tree order: depth first, names sorted (a/c/deep.bin before a/up before link).
    order = [line.split(" ")[0] for line in lines]
    assert order == sorted(order, key=lambda p: p.split("/"))


def test_labels_set_get_list_history(env: Env) -> None:
    src = _tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    first = _upload(env, src, "--label", "prod")
    second = _upload(env, src)
    third = _upload(env, src)
    assert env.ok("label", "get", "--repo", "r", "--label", "prod").out == first + "\n"

    moved = env.ok("label", "set", "--repo", "r", "--label", "prod", "--bundle", second)
    assert "label `prod` -> " + second in moved.err and "(move #2)" in moved.err
    env.ok("label", "set", "--repo", "r", "--label", "prod", "--bundle", third, "--expect", second)
    env.ok("label", "set", "--repo", "r", "--label", "dev", "--bundle", first, "--expect", "")
    assert env.ok("label", "get", "--repo", "r", "--label", "prod").out == third + "\n"

    listed = sorted(line.split(" , ")[:2] for line in env.ok("label", "list", "--repo", "r").out.splitlines())
    assert listed == [["dev", first], ["prod", third]]

    history = [
        line.split(" , ") for line in env.ok("label", "history", "--repo", "r", "--label", "prod").out.splitlines()
    ]
    assert [(h[0], h[1]) for h in history] == [("1", first), ("2", second), ("3", third)]
    as_json = json.loads(env.ok("label", "history", "--repo", "r", "--label", "prod", "--json").out)
    assert [(m["seq"], m["bundle"], m["previous"]) for m in as_json] == [
        (1, first, ""),
        (2, second, first),
        (3, third, second),
    ]


def test_download_reproduces_bytes_modes_mtimes_folders_and_links(env: Env) -> None:
    src = _tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    bundle_id = _upload(env, src)
    dest = env.tmp / "dest"
    dest.mkdir()  # an existing, empty destination
    done = env.ok("bundle", "download", "--repo", "r", "--bundle", bundle_id, "--destination", str(dest))
    assert "downloaded 6 files" in done.err and bundle_id in done.err

    assert _rel_paths(dest) == _rel_paths(src), "same entries, no temp files left over"
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        copy = dest / rel
        original_st, copy_st = path.lstat(), copy.lstat()
        if path.is_symlink():
            assert copy.is_symlink() and os.readlink(copy) == os.readlink(path), rel
        elif path.is_dir():
            assert copy.is_dir() and not copy.is_symlink(), rel
            assert stat.S_IMODE(copy_st.st_mode) == stat.S_IMODE(original_st.st_mode), rel
            assert copy_st.st_mtime_ns == original_st.st_mtime_ns, f"folder mtime of {rel}"
        else:
            assert copy.read_bytes() == path.read_bytes(), rel
            assert stat.S_IMODE(copy_st.st_mode) == stat.S_IMODE(original_st.st_mode), rel
            assert copy_st.st_mtime_ns == original_st.st_mtime_ns, f"file mtime of {rel}"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "secret.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "private").stat().st_mode) == 0o700
    assert list((dest / "empty").iterdir()) == [] and list((dest / "x" / "y").iterdir()) == []
    assert (dest / "link").read_bytes() == b"hello b\n" and (dest / "a" / "up").read_bytes().startswith(b"#!/bin/sh")


def test_download_single_file_writes_dest_slash_path(env: Env) -> None:
    src = _tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    _upload(env, src, "--label", "v1")
    dest = env.tmp / "one"
    env.ok(
        "bundle", "download", "file", "--file", "a/b.txt", "--repo", "r", "--label", "v1", "--destination", str(dest)
    )
    assert (dest / "a" / "b.txt").read_bytes() == b"hello b\n"
    assert (dest / "a" / "b.txt").stat().st_mtime_ns == (src / "a" / "b.txt").stat().st_mtime_ns
    assert _rel_paths(dest) == {"a", "a/b.txt"}, "only that file (and its folder) is written"


def test_diff_shows_added_removed_and_modified(env: Env) -> None:
    src = _tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    old = _upload(env, src)
    (src / "a" / "b.txt").write_bytes(b"changed\n")  # content
    (src / "secret.key").chmod(0o644)  # mode only
    (src / "run.sh").unlink()
    (src / "a" / "up").unlink()
    (src / "new.txt").write_bytes(b"new\n")
    (src / "a" / "c" / "more.bin").write_bytes(b"more\n")
    new = _upload(env, src)

    result = env.ok("bundle", "diff", "--repo", "r", "--bundle", old, "--with-bundle", new)
    assert result.out.splitlines() == [
        "M a/b.txt",
        "+ a/c/more.bin",
        "- a/up",
        "+ new.txt",
        "- run.sh",
        "M secret.key",
    ]
    assert f"6 differences between {old} and {new}" in result.err
    same = env.ok("bundle", "diff", "--repo", "r", "--bundle", new, "--with-bundle", new)
    assert same.out == ""
    backwards = env.ok("bundle", "diff", "--repo", "r", "--bundle", new, "--with-bundle", old).out.splitlines()
    assert "- new.txt" in backwards and "+ run.sh" in backwards and "M a/b.txt" in backwards


def test_json_outputs_parse(env: Env) -> None:
    src = _tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    upload = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1", "--json")
    body = _json_body(upload)
    bundle_id = upload.last_line
    assert body["bundle"]["id"] == bundle_id and body["label"]["bundle"] == bundle_id
    stats = body["stats"]
    assert (stats["files"], stats["directories"], stats["symlinks"]) == (6, 6, 2)
    assert stats["bytes_total"] == 8 + 5_000_000 + 6 + 18 + 3000
    assert stats["bytes_new"] == stats["bytes_total"] == stats["bytes_read"]

    listed = json.loads(env.ok("bundle", "list", "--repo", "r", "--json").out)
    assert [b["id"] for b in listed] == [bundle_id] and listed[0]["file_count"] == 6

    files = json.loads(env.ok("bundle", "list", "files", "--repo", "r", "--label", "v1", "--json").out)
    by_path = {f["path"]: f for f in files}
    assert by_path["run.sh"]["mode"] == "0o755" and by_path["link"]["target"] == "a/b.txt"
    assert by_path["a/c/deep.bin"]["size"] == 5_000_000 and len(by_path["a/c/deep.bin"]["chunks"]) >= 2

    verify = json.loads(env.ok("bundle", "verify", "--repo", "r", "--bundle", bundle_id, "--json").out)
    assert verify == {
        "bundle": bundle_id,
        "files": 6,
        "bytes": stats["bytes_total"],
        "ok": True,
        "problems": [],
    }

    (src / "run.sh").unlink()
    other = env.ok("bundle", "upload", "--path", str(src), "--message", "m2", "--repo", "r").last_line
    diff = json.loads(
        env.ok("bundle", "diff", "--repo", "r", "--bundle", bundle_id, "--with-bundle", other, "--json").out
    )
    assert diff == [{"path": "run.sh", "change": "removed", "old_size": 18, "new_size": None}]

    for args in (["repo", "list"], ["label", "list", "--repo", "r"], ["bundle", "get", "--repo", "r", "--label", "v1"]):
        json.loads(env.ok(*args, "--json").out)


def _show(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main([*args, "config", "show", "--json"]) == ExitCode.OK
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def test_config_create_then_show_uses_its_store(env: Env) -> None:
    configured = env.tmp / "configured-store"
    env.capsys.readouterr()
    code = main(["config", "create", "--name", "Ada", "--email", "ada@example.org", "--store", f"file://{configured}"])
    assert code == ExitCode.OK
    assert (env.tmp / "config.yaml").exists(), "DATARUN_CONFIG is where the config goes"

    shown = _show(env.capsys)
    assert shown["store"] == f"file://{configured}"
    assert shown["store_source"] == f"config {env.tmp / 'config.yaml'}"
    assert (shown["name"], shown["email"]) == ("Ada", "ada@example.org")
    env.capsys.readouterr()
    assert main(["config", "show"]) == ExitCode.OK
    text = env.capsys.readouterr().out
    assert f"store: file://{configured}\n" in text

    # Commands without --store really use it, and record the configured author.
    env.capsys.readouterr()
    assert main(["repo", "create", "--repo", "viacfg"]) == ExitCode.OK
    assert (configured / "repos" / "viacfg" / "repo.json").exists()
    src = _tree(env.tmp / "src")
    env.capsys.readouterr()
    assert main(["bundle", "upload", "--path", str(src), "--message", "m", "--repo", "viacfg"]) == ExitCode.OK
    bundle_id = env.capsys.readouterr().out.strip()
    assert main(["bundle", "get", "--repo", "viacfg", "--bundle", bundle_id, "--json"]) == ExitCode.OK
    record = json.loads(env.capsys.readouterr().out)
    assert record["provenance"]["author"] == {"name": "Ada", "email": "ada@example.org"}
    assert not env.store.exists(), "the --store-less commands did not touch another store"


def test_store_precedence_flag_over_env_over_config_over_default(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _show(env.capsys)
    assert (shown["store"], shown["store_source"]) == (f"file://{env.tmp / 'home' / 'store'}", "default")

    env.capsys.readouterr()
    assert main(["config", "create", "--store", "file:///srv/from-config"]) == ExitCode.OK
    shown = _show(env.capsys)
    assert (shown["store"], shown["store_source"]) == ("file:///srv/from-config", f"config {env.tmp / 'config.yaml'}")

    monkeypatch.setenv("DATARUN_STORE", "file:///srv/from-env")
    shown = _show(env.capsys)
    assert (shown["store"], shown["store_source"]) == ("file:///srv/from-env", "DATARUN_STORE")

    shown = _show(env.capsys, "--store", "file:///srv/from-flag")
    assert (shown["store"], shown["store_source"]) == ("file:///srv/from-flag", "--store")
    # The flag also works after the subcommand.
    env.capsys.readouterr()
    assert main(["config", "show", "--json", "--store", "file:///srv/late-flag"]) == ExitCode.OK
    late = json.loads(env.capsys.readouterr().out)
    assert (late["store"], late["store_source"]) == ("file:///srv/late-flag", "--store")


def test_reupload_of_unchanged_folder_reads_and_writes_nothing(env: Env) -> None:
    src = _tree(env.tmp / "src")
    # The hash cache ignores files modified in the last 2 s (racy entries): age them.
    ten_seconds_ago = time.time() - 10
    for path in src.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (ten_seconds_ago, ten_seconds_ago))
    env.ok("repo", "create", "--repo", "r")
    first = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    first_stats = _json_body(first)["stats"]
    assert first_stats["bytes_read"] == first_stats["bytes_total"] > 0
    packs_before = sorted(p.name for p in (env.store / "packs").rglob("*"))

    again = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    body = _json_body(again)
    stats = body["stats"]
    assert stats["bytes_new"] == 0, stats
    assert stats["bytes_read"] == 0, "every file should be a hash-cache hit"
    assert (stats["chunks_new"], stats["packs"], stats["bytes_stored"]) == (0, 0, 0)
    assert stats["bytes_total"] == first_stats["bytes_total"]
    assert body["bundle"]["manifest"] == _json_body(first)["bundle"]["manifest"]
    assert again.last_line != first.last_line, "still a new bundle"
    assert sorted(p.name for p in (env.store / "packs").rglob("*")) == packs_before
