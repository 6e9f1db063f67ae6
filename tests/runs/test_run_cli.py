"""`datarun run ...` end to end on a local store: exact outputs, exit codes, nothing uploaded on bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from datarun.errors import ExitCode
from datarun.ids import new_ksuid
from datarun.runs import CHANGES, RUN_FORMAT, record_key
from tests.cli.conftest import Env

PARAMS = {"description": "sample", "model": {"lr": 0.02, "layers": [64, 32]}, "seed": 7, "note": None}


def _folder(root: Path, name: str = "20230609-142856-sample", params: Any = PARAMS) -> Path:
    folder = root / name
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "loss.csv").write_text("step,loss\n1,0.5\n")
    (folder / "log.txt").write_text("hello\n")
    if params is not None:
        (folder / "params.json").write_text(params if isinstance(params, str) else orjson.dumps(params).decode())
    return folder


def _show(env: Env, run_id: str, *extra: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(env.ok("run", "show", run_id, "--json", *extra).out)
    return doc


def test_upload_makes_a_bundle_and_a_run_that_links_it(env: Env) -> None:
    folder = _folder(env.tmp)
    result = env.ok("run", "upload", "--path", str(folder), "--label", "latest")
    run_id = result.last_line
    assert "created repo `runs`" in result.err
    doc = _show(env, run_id)
    assert doc["format"] == RUN_FORMAT and doc["version"] == 1
    assert (doc["start"], doc["title"], doc["phase"]) == ("2023-06-09T14:28:56.000000Z", "sample", "Succeeded")
    assert doc["params"] == PARAMS
    assert doc["source"] == {"kind": "bundle", "uri": folder.absolute().as_uri()}
    [output] = doc["outputs"]
    assert output["name"] == "files" and output["repo"] == "runs"
    assert env.ok("label", "get", "--repo", "runs", "--label", "latest").last_line == output["bundle"]
    bundle = orjson.loads(env.ok("bundle", "get", "--repo", "runs", "--bundle", output["bundle"], "--json").out)
    assert bundle["provenance"]["run"]["run_id"] == run_id, "the bundle names the run that holds it"
    assert env.ok("run", "files", run_id).out.splitlines() == [
        "files , log.txt , 6",
        "files , out/loss.csv , 16",
        f"files , params.json , {(folder / 'params.json').stat().st_size}",
    ]
    env.ok("run", "download", run_id, "--destination", str(env.tmp / "copy"))
    assert (env.tmp / "copy" / "out" / "loss.csv").read_text() == "step,loss\n1,0.5\n"
    assert orjson.loads((env.tmp / "copy" / "params.json").read_bytes()) == PARAMS
    again = env.run("run", "download", run_id, "--destination", str(env.tmp / "copy"))
    assert again.code == ExitCode.USAGE and "is not empty; pass --force" in again.err


def test_bad_params_json_names_line_and_column_and_uploads_nothing(env: Env) -> None:
    folder = _folder(env.tmp, params='{\n  "lr": 0.1,\n  "depth": ,\n}')
    result = env.run("run", "upload", "--path", str(folder))
    assert result.code == ExitCode.USAGE
    assert result.err == (
        f"error: `{folder / 'params.json'}` is not JSON: line 3 column 12: Expecting value; fix the file and retry\n"
    )
    assert not env.store.exists(), "nothing was written: not even the store"


def test_bad_folder_name_says_what_was_expected_and_accepts_overrides(env: Env) -> None:
    folder = _folder(env.tmp, name="my-run")
    result = env.run("run", "upload", "--path", str(folder))
    assert result.code == ExitCode.USAGE
    assert "folder name `my-run` is not `YYYYMMDD-HHMMSS-title`" in result.err
    assert "pass --title and --start" in result.err
    result = env.run("run", "upload", "--path", str(folder), "--title", "mine")
    assert result.code == ExitCode.USAGE and result.err.rstrip().endswith("pass --start")
    assert not env.store.exists()
    run_id = env.ok(
        "run", "upload", "--path", str(folder), "--title", "mine", "--start", "2024-01-02T03:04:05Z", "--repo", "exp"
    ).last_line
    doc = _show(env, run_id)
    assert (doc["title"], doc["start"], doc["outputs"][0]["repo"]) == ("mine", "2024-01-02T03:04:05.000000Z", "exp")


def test_tag_annotate_hide_make_versions_and_history_shows_them(env: Env) -> None:
    run_id = env.ok("run", "upload", "--path", str(_folder(env.tmp))).last_line
    env.ok("run", "tag", run_id, "baseline", "good")
    env.ok("run", "annotate", run_id, "reviewer=ada", "verdict=keep=yes")
    env.ok("run", "hide", run_id)
    env.ok("run", "tag", run_id, "good", "--remove")
    env.ok("run", "unhide", run_id)
    doc = _show(env, run_id)
    assert doc["version"] == 6 and doc["tags"] == ["baseline"] and not doc["hidden"]
    assert doc["annotations"] == {"reviewer": "ada", "verdict": "keep=yes"}
    assert _show(env, run_id, "--version", "2")["tags"] == ["baseline", "good"]
    assert _show(env, run_id, "--version", "4")["hidden"] is True
    lines = env.ok("run", "history", run_id).out.splitlines()
    assert [line.split(" , ")[0] for line in lines] == ["1", "2", "3", "4", "5", "6"]
    assert [line.split(" , ")[-1] for line in lines] == ["created", "tags", "annotations", "hidden", "tags", "hidden"]
    human = env.ok("run", "show", run_id).out
    assert "tags         baseline\n" in human and "annotations  reviewer=ada, verdict=keep=yes\n" in human


def test_update_errors_and_unknown_runs(env: Env) -> None:
    run_id = env.ok("run", "upload", "--path", str(_folder(env.tmp))).last_line
    result = env.run("run", "annotate", run_id, "no-equals")
    assert result.code == ExitCode.USAGE and "annotation `no-equals` must look like KEY=VALUE" in result.err
    result = env.run("run", "tag", run_id, " spaced")
    assert result.code == ExitCode.USAGE and "invalid tag" in result.err
    ghost = new_ksuid()
    result = env.run("run", "show", ghost)
    assert result.code == ExitCode.NOT_FOUND and f"run `{ghost}` not found" in result.err
    result = env.run("run", "show", run_id, "--version", "5")
    assert result.code == ExitCode.NOT_FOUND and "has no version 5; it has versions 1 to 1" in result.err
    result = env.run("run", "show", "not-an-id")
    assert result.code == ExitCode.USAGE and "is not a run id" in result.err
    assert len(_show(env, run_id)["tags"]) == 0


def test_a_record_of_a_newer_format_is_refused_with_upgrade(env: Env) -> None:
    run_id = env.ok("run", "upload", "--path", str(_folder(env.tmp))).last_line
    path = env.store / record_key(run_id, 1)
    path.write_bytes(orjson.dumps({**orjson.loads(path.read_bytes()), "format": RUN_FORMAT + 1}))
    result = env.run("run", "show", run_id)
    assert result.code == ExitCode.USAGE and "upgrade datarun" in result.err


def test_import_indexes_in_place_refuses_bad_folders_and_is_idempotent(env: Env) -> None:
    lake = env.tmp / "lake"
    _folder(lake / "proj", "20230609-142856-alpha", {"description": "sample", "lr": 0.1})
    _folder(lake / "proj", "20230610-090000-beta", {"description": "other", "lr": 0.001})
    _folder(lake, "not-a-run")
    broken = _folder(lake, "20230611-000000-broken", params='{"a": [1,, 2]}')
    result = env.run("run", "import", str(lake))
    assert result.code == ExitCode.USAGE
    assert "2 folders of" in result.err and "not-a-run/: the folder name `not-a-run`" in result.err
    assert "line 1 column 10" in result.err and "nothing was imported" in result.err
    assert not (env.store / "runs").exists()

    result = env.ok("run", "import", str(lake), "--skip-bad")
    ids = result.out.split()
    assert len(ids) == 2 and "imported 2 new runs" in result.err and "2 skipped" in result.err
    alpha, beta = (_show(env, i) for i in ids)
    assert (alpha["title"], alpha["start"]) == ("alpha", "2023-06-09T14:28:56.000000Z")
    assert alpha["source"] == {"kind": "import", "uri": f"{lake.absolute().as_uri()}/proj/20230609-142856-alpha/"}
    assert alpha["outputs"] == [] and beta["params"] == {"description": "other", "lr": 0.001}
    assert not (env.store / "packs").exists(), "no file was copied"
    assert env.ok("run", "files", ids[0]).out.splitlines() == [
        "source , log.txt , 6",
        "source , out/loss.csv , 16",
        f"source , params.json , {len(orjson.dumps({'description': 'sample', 'lr': 0.1}))}",
    ]
    env.ok("run", "download", ids[0], "--destination", str(env.tmp / "alpha"))
    assert (env.tmp / "alpha" / "out" / "loss.csv").read_text() == "step,loss\n1,0.5\n"

    (broken / "params.json").write_text('{"a": [1, 2]}')
    (lake / "proj" / "20230610-090000-beta" / "params.json").write_text('{"description": "other", "lr": 0.002}')
    env.ok("run", "tag", ids[0], "kept")
    result = env.ok("run", "import", str(lake), "--skip-bad")
    assert "imported 1 new runs" in result.err and "1 updated, 1 unchanged, 1 skipped" in result.err
    assert _show(env, ids[1])["params"]["lr"] == 0.002 and _show(env, ids[1])["version"] == 2
    assert _show(env, ids[0])["tags"] == ["kept"], "a re-import keeps what people added"
    changes = sorted(p.name for p in (env.store / CHANGES).iterdir())
    assert len(changes) == 2 + 1 + 1 + 1  # two imports, a tag, a new run, an update


def test_a_folder_without_params_json_has_empty_params_and_says_so(env: Env) -> None:
    folder = _folder(env.tmp, params=None)
    result = env.ok("run", "upload", "--path", str(folder), "--json")
    assert f"no params.json in `{folder}`: the run's params are {{}}" in result.err
    assert _show(env, result.last_line)["params"] == {}


def test_importing_a_run_folder_itself_and_a_missing_folder(env: Env) -> None:
    folder = _folder(env.tmp / "lake", "20230609-142856-solo")
    [run_id] = env.ok("run", "import", str(folder)).out.split()
    assert _show(env, run_id)["title"] == "solo"
    result = env.run("run", "import", str(env.tmp / "nothing-here"))
    assert result.code == ExitCode.LOCAL_IO and "nothing-here` is not a folder" in result.err
    (env.tmp / "empty").mkdir()
    result = env.ok("run", "import", str(env.tmp / "empty"))
    assert result.out == "" and "imported 0 new runs" in result.err
