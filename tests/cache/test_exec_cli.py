"""`datarun run exec` / `explain-cache` end to end on a local store.

The mutation matrix on the CLI: each change that `run exec` can express (an arg, an env value, a
param, one input byte, the cache version) misses; identical reruns and a re-uploaded identical
input hit; a hit whose output bundle is gone runs again; failed runs and runs missing an output
are never hits. (The image digest is not a `run exec` input; it is in the key-level matrix of
test_key.py.) The command counts its executions in a file, so "hit" means it did not run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from datarun.errors import ExitCode
from datarun.layout import bundle_key
from tests.cli.conftest import Env, Result

SCRIPT = """
import json, os, pathlib, sys
counter = pathlib.Path(sys.argv[1])
counter.write_text(str(int(counter.read_text() or 0) + 1) if counter.exists() else "1")
data = pathlib.Path(os.environ["DATARUN_INPUT_DATA"], "x.txt").read_text()
params = json.loads(pathlib.Path(os.environ["DATARUN_PARAMS"]).read_text())
if sys.argv[2] == "fail":
    sys.exit(3)
if sys.argv[2] == "skip":
    sys.exit(0)
out = pathlib.Path(os.environ["DATARUN_OUTPUT_MODEL"])
out.mkdir(parents=True, exist_ok=True)
(out / "result.txt").write_text(f"{data}|{params}|{os.environ.get('MODE')}|{sys.argv[2]}")
"""


class Exec:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.script = env.tmp / "task.py"
        self.script.write_text(SCRIPT)
        self.counter = env.tmp / "count"
        self.n = 0
        (env.tmp / "params.json").write_text('{"lr": 0.1}')
        env.ok("repo", "create", "--repo", "data")
        env.ok("repo", "create", "--repo", "models")
        self.upload_input("hello")

    def upload_input(self, text: str | None) -> str:
        """A new input bundle under `latest`; None uploads the first folder again, unchanged."""
        src = self.env.tmp / "src0"
        if text is not None:
            src = self.env.tmp / f"src{self.n}"
            self.n += 1
            src.mkdir()
            (src / "x.txt").write_text(text)
        return self.env.ok("bundle", "upload", "--path", str(src), "--message", "in", "--repo", "data",
                           "--label", "latest").last_line.split()[-1]  # fmt: skip

    @property
    def runs(self) -> int:
        return int(self.counter.read_text()) if self.counter.exists() else 0

    def run(self, arg: str = "go", *extra: str) -> tuple[Result, Path]:
        work = self.env.tmp / f"work{self.n}"
        self.n += 1
        work.mkdir()
        result = self.env.run(
            "run", "exec", "--input", "data=data@latest", "--output", "model=models:out:latest",
            "--params", str(self.env.tmp / "params.json"), "--env", "MODE=fast", "--workdir", str(work),
            *extra, "--", sys.executable, str(self.script), str(self.counter), arg,
        )  # fmt: skip
        return result, work

    def ok(self, arg: str = "go", *extra: str) -> tuple[str, Path]:
        result, work = self.run(arg, *extra)
        assert result.code == 0, result.err
        return result.last_line, work

    def show(self, run_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(self.env.ok("run", "show", run_id, "--json").out)
        return doc


@pytest.fixture
def ex(env: Env) -> Exec:
    return Exec(env)


def test_a_miss_runs_uploads_and_records_and_an_identical_rerun_hits(ex: Exec) -> None:
    first, work = ex.ok()
    assert ex.runs == 1
    assert (work / "out" / "result.txt").read_text() == "hello|{'lr': 0.1}|fast|go"
    doc = ex.show(first)
    assert doc["phase"] == "Succeeded" and doc["exit_code"] == 0 and doc["outputs"][0]["name"] == "model"
    assert doc["cache"]["parts"]["params"] == {"lr": 0.1} and doc["cache"]["cached_from"] is None
    second, work2 = ex.ok()
    assert ex.runs == 1  # not run again
    assert (work2 / "out" / "result.txt").read_text() == "hello|{'lr': 0.1}|fast|go"
    hit = ex.show(second)
    assert hit["phase"] == "Cached" and hit["cache"]["cached_from"] == first
    assert hit["outputs"] == doc["outputs"] and hit["cache"]["key"] == doc["cache"]["key"]
    label = orjson.loads(ex.env.ok("label", "get", "--repo", "models", "--label", "latest", "--json").out)
    assert label["bundle"] == doc["outputs"][0]["bundle"]
    explained = orjson.loads(ex.env.ok("run", "explain-cache", "--run", second, "--json").out)
    assert explained["cached_from"] == first


def test_an_identical_input_uploaded_again_as_a_new_bundle_hits(ex: Exec) -> None:
    first, _ = ex.ok()
    # The same files (same bytes, same mtimes: the manifest records both) as a new bundle id.
    ex.upload_input(None)
    second, _ = ex.ok()
    assert ex.runs == 1
    assert ex.show(second)["cache"]["cached_from"] == first
    assert ex.show(second)["inputs"] != ex.show(first)["inputs"]  # another bundle, same content


MUTATIONS = {
    "one arg": (("other",), "command[3]"),
    "one env value": (("go", "--env", "MODE=slow"), "env.MODE"),
    "cache version": (("go", "--cache-version", "2"), "salt"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_mutation_misses_and_explain_names_it(ex: Exec, name: str) -> None:
    ex.ok()
    args, part = MUTATIONS[name]
    second, _ = ex.ok(*args)
    assert ex.runs == 2
    explained = orjson.loads(ex.env.ok("run", "explain-cache", "--run", second, "--json").out)
    assert explained["cached_from"] is None and part in explained["differs"]
    text = ex.env.ok("run", "explain-cache", "--run", second).out
    assert "differs in: " in text and part in text


def test_one_param_and_one_input_byte_miss(ex: Exec) -> None:
    ex.ok()
    (ex.env.tmp / "params.json").write_text('{"lr": 0.2}')
    second, _ = ex.ok()
    assert ex.runs == 2
    explained = orjson.loads(ex.env.ok("run", "explain-cache", "--run", second, "--json").out)
    assert explained["differs"] == ["params.lr"]
    ex.upload_input("hellp")
    third, work = ex.ok()
    assert ex.runs == 3 and (work / "out" / "result.txt").read_text().startswith("hellp|")
    explained = orjson.loads(ex.env.ok("run", "explain-cache", "--run", third, "--json").out)
    assert explained["nearest"] == second and explained["differs"] == ["inputs.data.manifest"]


def test_a_hit_whose_output_bundle_is_gone_runs_again(ex: Exec) -> None:
    first, _ = ex.ok()
    bundle = ex.show(first)["outputs"][0]["bundle"]
    (ex.env.store / bundle_key("models", bundle)).unlink()
    result, work = ex.run()
    assert result.code == 0 and ex.runs == 2 and "no longer exists" in result.err
    assert ex.show(result.last_line)["phase"] == "Succeeded"
    assert (work / "out" / "result.txt").exists()


def test_a_failed_run_and_a_run_missing_its_output_are_never_hits(ex: Exec) -> None:
    failed, _ = ex.run("fail")
    assert failed.code == ExitCode.RUN_FAILED and "exited with 3" in failed.err
    again, _ = ex.run("fail")
    assert again.code == ExitCode.RUN_FAILED and ex.runs == 2
    skipped, _ = ex.run("skip")
    assert skipped.code == ExitCode.RUN_FAILED and "did not write" in skipped.err
    again, _ = ex.run("skip")
    assert again.code == ExitCode.RUN_FAILED and ex.runs == 4
    assert list(ex.env.store.glob("cache/**/*.json")) == []  # no entry for any of them
    listed = ex.env.ok("bundle", "list", "--repo", "models").out
    assert listed.strip() == ""  # nothing uploaded by failed runs


def test_refresh_runs_anyway_and_off_writes_no_entry(ex: Exec) -> None:
    ex.ok()
    ex.ok("go", "--cache", "refresh")
    assert ex.runs == 2
    ex.ok("go", "--cache", "off")
    assert ex.runs == 3
    ex.ok()
    assert ex.runs == 3  # `use` hits the newest recorded run


def test_bad_arguments_exit_2_and_run_nothing(ex: Exec) -> None:
    for bad in (["--input", "data"], ["--output", "model=models"], ["--env", "NOEQ"]):
        result = ex.env.run("run", "exec", *bad, "--", "true")
        assert result.code == ExitCode.USAGE, result.err
        assert "is not" in result.err
    result = ex.env.run("run", "exec", "--input", "data=data@nolabel", "--", "true")
    assert result.code == ExitCode.NOT_FOUND
    work = ex.env.tmp / "busy"
    (work / "out").mkdir(parents=True)
    (work / "out" / "old").write_text("x")
    result = ex.env.run("run", "exec", "--output", "model=models:out", "--workdir", str(work), "--", "true")
    assert result.code == ExitCode.CONFLICT and "not an empty folder" in result.err
    assert ex.runs == 0


def test_a_hit_whose_output_was_invalidated_runs_again(ex: Exec) -> None:
    first, _ = ex.ok()
    bundle = ex.show(first)["outputs"][0]["bundle"]
    ex.env.ok("invalidate", "--repo", "models", "--bundle", bundle, "--reason", "bad labels")
    result, work = ex.run()
    assert result.code == 0 and ex.runs == 2, result.err
    assert "invalidated" in result.err and "bad labels" in result.err
    assert ex.show(result.last_line)["phase"] == "Succeeded" and (work / "out" / "result.txt").exists()


def test_a_hit_whose_input_was_invalidated_runs_again(ex: Exec) -> None:
    first, _ = ex.ok()
    data = ex.show(first)["inputs"][0]["bundle"]
    ex.env.ok("invalidate", "--repo", "data", "--bundle", data, "--reason", "bad sensor")
    result, _ = ex.run()
    assert result.code == 0 and ex.runs == 2, result.err
    assert f"bundle/data/{data}" in result.err and "bad sensor" in result.err
