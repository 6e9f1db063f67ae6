"""The everyday commands, with exact outputs where scripts depend on them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from datarun.ids import is_ksuid
from tests.cli.conftest import Env, make_tree


def _upload(env: Env, path: Path, *extra: str) -> str:
    result = env.ok("bundle", "upload", "--path", str(path), "--message", "m", "--repo", "r", *extra)
    assert is_ksuid(result.last_line), result.out
    return result.last_line


def test_upload_list_download_round_trip(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r", "--description", "demo")
    assert env.ok("repo", "list").out.startswith("r , demo , ")
    bundle = _upload(env, src, "--label", "latest")
    listed = env.ok("bundle", "list", "--repo", "r").out.strip().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{bundle} , ") and listed[0].endswith(" , m")
    files = env.ok("bundle", "list", "files", "--repo", "r", "--label", "latest").out.splitlines()
    assert "a/b.txt , 4" in files and "link -> a/b.txt" in files
    dest = env.tmp / "dest"
    env.ok("bundle", "download", "--repo", "r", "--bundle", bundle, "--destination", str(dest))
    for rel in ["a/b.txt", "a/b/deep.csv", "run.sh", "private.key"]:
        original, copy = (src / rel).stat(), (dest / rel).stat()
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
        assert stat.S_IMODE(copy.st_mode) == stat.S_IMODE(original.st_mode)
        assert copy.st_mtime_ns == original.st_mtime_ns
    assert (dest / "empty").is_dir() and not any((dest / "empty").iterdir())
    assert os.readlink(dest / "link") == "a/b.txt"
    leftovers = [p for p in dest.rglob("*") if ".datarun-" in p.name]
    assert leftovers == []


def test_download_single_file(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    _upload(env, src, "--label", "v1")
    out = env.tmp / "one"
    env.ok("bundle", "download", "file", "--file", "a/b.txt", "--repo", "r", "--label", "v1", "--destination", str(out))
    assert (out / "a" / "b.txt").read_text() == "bee\n"
    assert sorted(p.name for p in out.rglob("*")) == ["a", "b.txt"]


def test_labels_move_and_keep_history(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    first = _upload(env, src, "--label", "prod")
    second = _upload(env, src)
    env.ok("label", "set", "--repo", "r", "--label", "prod", "--bundle", second)
    assert env.ok("label", "get", "--repo", "r", "--label", "prod").out.strip() == second
    history = [
        line.split(" , ") for line in env.ok("label", "history", "--repo", "r", "--label", "prod").out.splitlines()
    ]
    assert [(h[0], h[1]) for h in history] == [("1", first), ("2", second)]
    listed = env.ok("label", "list", "--repo", "r").out.splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"prod , {second} , ")


def test_diff_reports_added_removed_modified(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    old = _upload(env, src)
    (src / "a" / "b.txt").write_text("changed\n")
    (src / "run.sh").unlink()
    (src / "new.txt").write_text("new\n")
    new = _upload(env, src)
    result = env.ok("bundle", "diff", "--repo", "r", "--bundle", old, "--with-bundle", new)
    assert result.out.splitlines() == ["M a/b.txt", "+ new.txt", "- run.sh"]
    as_json = json.loads(env.ok("bundle", "diff", "--repo", "r", "--bundle", old, "--with-bundle", new, "--json").out)
    assert {(c["path"], c["change"]) for c in as_json} == {
        ("a/b.txt", "modified"),
        ("new.txt", "added"),
        ("run.sh", "removed"),
    }


def test_json_outputs_parse(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    upload = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    lines = upload.out.strip().splitlines()
    record = json.loads("\n".join(lines[:-1]))
    assert record["bundle"]["id"] == lines[-1]
    assert record["stats"]["files"] == 4 and record["stats"]["symlinks"] == 1
    bundles = json.loads(env.ok("bundle", "list", "--repo", "r", "--json").out)
    assert bundles[0]["provenance"]["host"]
    verify = json.loads(env.ok("bundle", "verify", "--repo", "r", "--bundle", lines[-1], "--json").out)
    assert verify["ok"] is True and verify["files"] == 4
    assert json.loads(env.ok("repo", "list", "--json").out)[0]["name"] == "r"


def test_provenance_inputs_are_recorded(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    raw = _upload(env, src)
    derived = _upload(env, src, "--input", f"r:{raw}")
    record = json.loads(env.ok("bundle", "get", "--repo", "r", "--bundle", derived, "--json").out)
    assert record["provenance"]["inputs"] == [{"repo": "r", "bundle": raw}]


def test_store_precedence_flag_env_config_default(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from datarun.cli.main import main

    def shown(*args: str) -> dict[str, str]:
        env.capsys.readouterr()
        assert main([*args, "config", "show", "--json"]) == 0
        data: dict[str, str] = json.loads(env.capsys.readouterr().out)
        return data

    assert shown()["store_source"] == "default"
    assert shown()["store"] == f"file://{env.tmp / 'home' / 'store'}"
    assert main(["config", "create", "--name", "Ada", "--store", "file:///srv/from-config"]) == 0
    assert shown()["store"] == "file:///srv/from-config"
    monkeypatch.setenv("DATARUN_STORE", "file:///srv/from-env")
    assert shown()["store"] == "file:///srv/from-env"
    assert shown("--store", "file:///srv/from-flag")["store_source"] == "--store"
    assert shown("--store", "file:///srv/from-flag")["store"] == "file:///srv/from-flag"


def test_reupload_of_unchanged_folder_reads_and_writes_nothing(env: Env) -> None:
    src = make_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "r")
    _upload(env, src)
    packs_before = sorted(p.name for p in (env.store / "packs").rglob("*"))
    again = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    stats = json.loads("\n".join(again.out.strip().splitlines()[:-1]))["stats"]
    assert stats["bytes_new"] == 0 and stats["bytes_read"] == 0
    assert sorted(p.name for p in (env.store / "packs").rglob("*")) == packs_before


def test_quickstart_runs_on_the_default_store(env: Env) -> None:
    from datarun.cli.main import main

    env.capsys.readouterr()
    assert main(["quickstart"]) == 0
    out = env.capsys.readouterr().out
    assert f"store: file://{env.tmp / 'home' / 'store'}" in out
    assert "identical to the original" in out and "0 new bytes" in out
