"""The lineage commands through the real CLI on a local store (SQLite index in the cache)."""

from __future__ import annotations

import json
from pathlib import Path

from datarun.errors import ExitCode
from datarun.store import LocalStore
from tests.catalog.writer import run_doc, write_version
from tests.cli.conftest import Env, env

__all__ = ["env"]  # the CLI tier's fixture, registered by import


def _bundle(env: Env, repo: str, name: str, *inputs: str) -> str:
    folder = env.tmp / name
    folder.mkdir()
    (folder / "f.txt").write_text(name)
    args = ["bundle", "upload", "--repo", repo, "--path", str(folder), "--message", name, "--label", "latest"]
    for i in inputs:
        args += ["--input", i]
    return env.ok(*args).last_line


def _setup(env: Env) -> tuple[str, str, str]:
    env.ok("repo", "create", "--repo", "raw", "--description", "r")
    env.ok("repo", "create", "--repo", "models", "--description", "m")
    raw = _bundle(env, "raw", "frames")
    model = _bundle(env, "models", "bert", f"raw:{raw}")
    record = env.ok(
        "record", "add", "--kind", "model", "--uri", "fpga://b7/m", "--derived-from", f"models@{model}", "--tag", "prod"
    ).last_line
    return raw, model, record


def test_what_data_trained_this_model(env: Env) -> None:
    raw, model, record = _setup(env)
    got = json.loads(
        env.ok("lineage", "ancestors", "--repo", "models", "--label", "latest", "--kind", "bundle", "--json").out
    )
    assert [(n["repo"], n["id"], n["depth"]) for n in got["nodes"]] == [("models", model, 0), ("raw", raw, 1)]
    assert got["cut"] is False
    down = env.ok("lineage", "descendants", "--repo", "raw", "--bundle", raw, "--depth", "1")
    assert f"models@{model}" in down.out and record not in down.out
    assert "cut" in down.err
    shown = env.ok("bundle", "get", "--repo", "models", "--bundle", model).out
    assert f"parent: raw@{raw}" in shown and f"child: record:{record}" in shown


def test_bad_parent_is_refused_before_writing(env: Env) -> None:
    _setup(env)
    bad = env.run("record", "add", "--kind", "model", "--uri", "u", "--derived-from", "models:oops")
    assert bad.code == ExitCode.USAGE and "repo@bundle-id" in bad.err
    missing = env.run(
        "record", "add", "--kind", "m", "--uri", "u", "--derived-from", "models@3MxsAKEXsfyWG3xgP3yRyjBmvjc"
    )
    assert missing.code == ExitCode.NOT_FOUND
    assert len(list((env.store / "lineage" / "records").iterdir())) == 1
    assert env.run("lineage", "ancestors", "--run", "3MxsAKEXsfyWG3xgP3yRyjBmvjc").code == ExitCode.NOT_FOUND
    assert env.run("lineage", "ancestors", "--repo", "raw").code == ExitCode.USAGE


def test_invalid_bundles_show_and_refuse_download(env: Env, tmp_path: Path) -> None:
    raw, model, record = _setup(env)
    dry = env.ok("invalidate", "--repo", "raw", "--bundle", raw, "--reason", "bad sensor", "--dry-run")
    assert dry.out.split() == [f"bundle/raw/{raw}", f"bundle/models/{model}", f"record/{record}"]
    assert env.ok("bundle", "download", "--repo", "models", "--bundle", model, "--destination", str(tmp_path / "ok"))
    env.ok("invalidate", "--repo", "raw", "--bundle", raw, "--reason", "bad sensor")
    listed = json.loads(env.ok("bundle", "list", "--repo", "models", "--json").out)
    assert [b["invalid"] for b in listed] == [True]
    assert "INVALID" in env.ok("label", "list", "--repo", "raw").out
    assert "INVALID: bad sensor" in env.ok("bundle", "get", "--repo", "models", "--bundle", model).out
    refused = env.run(
        "bundle", "download", "--repo", "models", "--bundle", model, "--destination", str(tmp_path / "no")
    )
    assert refused.code == ExitCode.INVALID and "bad sensor" in refused.err and "--allow-invalid" in refused.err
    assert not (tmp_path / "no").exists()
    (tmp_path / "mnt").mkdir()
    mounted = env.run("bundle", "mount", "--repo", "models", "--bundle", model, "--mount", str(tmp_path / "mnt"))
    assert mounted.code == ExitCode.INVALID and "--allow-invalid" in mounted.err, "refused before mounting"
    env.ok(
        "bundle",
        "download",
        "--repo",
        "models",
        "--label",
        "latest",
        "--destination",
        str(tmp_path / "yes"),
        "--allow-invalid",
    )
    assert (tmp_path / "yes" / "f.txt").read_text() == "bert"
    env.ok("revalidate", "--repo", "raw", "--bundle", raw, "--reason", "fine after all")
    env.ok("bundle", "download", "--repo", "models", "--bundle", model, "--destination", str(tmp_path / "again"))
    assert "INVALID" not in env.ok("label", "list", "--repo", "raw").out


def test_graph_command_writes_files(env: Env, tmp_path: Path) -> None:
    _raw, model, _record = _setup(env)
    out = tmp_path / "g.mmd"
    env.ok("lineage", "graph", "--repo", "models", "--bundle", model, "--format", "mermaid", "-o", str(out))
    assert out.read_text().startswith("flowchart LR") and "labels: latest" in out.read_text()
    assert env.run("lineage", "graph", "--repo", "models", "--bundle", model, "--format", "png").code == ExitCode.USAGE


def test_run_query_sees_run_invalid(env: Env) -> None:
    raw, _model, _record = _setup(env)
    store = LocalStore(env.store)
    reader = run_doc(title="train", inputs=[{"name": "data", "repo": "raw", "bundle": raw}])
    other = run_doc(title="unrelated")
    for doc in (reader, other):
        write_version(store, doc)
    before = json.loads(env.ok("run", "query", "run.invalid = false", "--json").out)
    assert {r["id"] for r in before} == {reader["id"], other["id"]}
    env.ok("invalidate", "--repo", "raw", "--bundle", raw, "--reason", "bad sensor")
    hit = json.loads(env.ok("run", "query", "run.invalid = true", "--json").out)
    assert [r["id"] for r in hit] == [reader["id"]] and hit[0]["invalid"] is True
    assert "(INVALID)" in env.ok("run", "list").out
    # A newer version of the run (the catalog rewrites its rows) keeps the flag.
    write_version(store, {**reader, "version": 2, "tags": ["x"]})
    assert [r["id"] for r in json.loads(env.ok("run", "query", "run.invalid", "--json").out)] == [reader["id"]]
    env.ok("revalidate", "--repo", "raw", "--bundle", raw, "--reason", "fine")
    assert json.loads(env.ok("run", "query", "run.invalid = true", "--json").out) == []


def test_a_bundle_made_from_an_invalid_one_is_refused_too(env: Env, tmp_path: Path) -> None:
    # Downloaded with --allow-invalid and uploaded again as an input: no mark names the new
    # bundle, yet it descends from the invalid one, so download refuses it the same way.
    raw, _model, _record = _setup(env)
    env.ok("invalidate", "--repo", "raw", "--bundle", raw, "--reason", "bad sensor")
    later = _bundle(env, "models", "retrained", f"raw:{raw}")
    refused = env.run(
        "bundle", "download", "--repo", "models", "--bundle", later, "--destination", str(tmp_path / "no")
    )
    assert refused.code == ExitCode.INVALID and "bad sensor" in refused.err
    assert not (tmp_path / "no").exists()
    clean = _bundle(env, "raw", "frames-2")
    env.ok("bundle", "download", "--repo", "raw", "--bundle", clean, "--destination", str(tmp_path / "ok"))


def test_a_rerun_action_is_accepted_on_a_repo_or_a_record_and_its_execution_is_pending(env: Env) -> None:
    raw, _model, record = _setup(env)
    on_repo = env.ok("action", "add", "--on", "repo=models", "--do", "rerun").last_line
    on_record = env.ok("action", "add", "--on", f"record={record}", "--do", "rerun", "--json").out
    assert json.loads(on_record)["do"] == "rerun" and json.loads(on_record)["on"] == {"record": record}
    listed = env.ok("action", "list").out
    assert f"{on_repo} , repo=models , rerun" in listed
    done = env.ok("invalidate", "--repo", "raw", "--bundle", raw, "--reason", "bad frames")
    # models@bert was uploaded by hand: no run made it, so nothing is left for the operator.
    assert "nothing to rerun" in done.err
    refused = env.run("action", "add", "--on", "repo=models", "--do", "restart")
    assert refused.code == ExitCode.USAGE and "rerun" in refused.err
