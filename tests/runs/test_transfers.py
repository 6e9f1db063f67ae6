"""The transfer summary of each uploaded output lands in the run record (`run upload`, `run exec`,
the sidecars' lifecycle), with the same numbers as the bundle's provenance, and `run show` prints it."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from datarun.errors import IntegrityError, UsageError
from datarun.ids import new_ksuid
from datarun.runs import BundleLink, Run
from datarun.summary import TransferSummary
from tests.cli.conftest import Env
from tests.runs.test_run_cli import _folder, _show

SUMMARY = TransferSummary("upload", 1000, 600, 300, 3, 2, 4, 0.5)


def _bundle(env: Env, repo: str, bundle: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(env.ok("bundle", "get", "--repo", repo, "--bundle", bundle, "--json").out)
    return doc


def test_run_upload_records_the_bundles_transfer_summary_and_show_prints_it(env: Env) -> None:
    folder = _folder(env.tmp)
    run_id = env.ok("run", "upload", "--path", str(folder)).last_line
    doc = _show(env, run_id)
    [output] = doc["outputs"]
    transfer = doc["transfers"][output["name"]]
    assert transfer == _bundle(env, "runs", output["bundle"])["provenance"]["transfer"], "one measurement, two places"
    assert transfer["files"] == 3 and transfer["bytes"] == sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file()
    )
    assert transfer["chunks_new"] + transfer["chunks_deduplicated"] >= 3 and transfer["seconds"] > 0
    lines = dict(line.split(maxsplit=2)[1:] for line in env.ok("run", "show", run_id).out.splitlines() if
                 line.startswith("transfer "))  # fmt: skip
    assert set(lines) == {"files"}
    assert lines["files"].startswith("upload ") and "in 3 files" in lines["files"] and "MiB/s" in lines["files"]
    # The catalog indexes the field like any other: runs can be found by what they moved.
    found = env.ok("run", "query", f"run.transfers.files.bytes = {transfer['bytes']}", "--json").out
    assert [r["id"] for r in orjson.loads(found)] == [run_id]
    assert orjson.loads(env.ok("run", "query", "run.transfers.files.files > 3", "--json").out) == []


def test_run_exec_records_the_transfer_of_each_output(env: Env) -> None:
    env.ok("repo", "create", "--repo", "models")
    script = env.tmp / "task.py"
    script.write_text("import os, pathlib\nout = pathlib.Path(os.environ['DATARUN_OUTPUT_MODEL'])\n"
                      "out.mkdir(parents=True)\n(out / 'w.bin').write_bytes(b'x' * 5000)\n")  # fmt: skip
    work = env.tmp / "work"
    work.mkdir()
    run_id = env.ok("run", "exec", "--output", "model=models:out", "--workdir", str(work), "--cache", "off", "--",
                    sys.executable, str(script)).last_line  # fmt: skip
    doc = _show(env, run_id)
    [output] = doc["outputs"]
    assert list(doc["transfers"]) == ["model"]
    assert doc["transfers"]["model"] == _bundle(env, "models", output["bundle"])["provenance"]["transfer"]
    assert (doc["transfers"]["model"]["files"], doc["transfers"]["model"]["bytes"]) == (1, 5000)


def _run(**extra: Any) -> Run:
    link = BundleLink("out", "data", new_ksuid())
    return Run(id=new_ksuid(), start="2023-06-09T14:28:56Z", outputs=(link,), **extra)


def test_transfers_round_trip_and_old_records_without_them_parse() -> None:
    run = _run(transfers={"out": SUMMARY})
    doc = orjson.loads(orjson.dumps(run.to_json()))
    assert doc["transfers"]["out"]["throughput"] == 2000.0
    assert Run.from_json(doc) == run
    del doc["transfers"]
    assert Run.from_json(doc).transfers == {}


def test_a_transfer_for_no_output_or_a_bad_one_is_refused() -> None:
    with pytest.raises(UsageError, match="transfer summary for `other`, which is not one of its outputs"):
        _run(transfers={"other": SUMMARY}).check()
    doc = _run(transfers={"out": SUMMARY}).to_json()
    doc["transfers"]["out"]["files"] = -1
    with pytest.raises(IntegrityError, match=r"transfers\.out has a negative count"):
        Run.from_json(doc)
    doc["transfers"]["out"] = "fast"
    with pytest.raises(IntegrityError, match=r"transfers\.out is not an object"):
        Run.from_json(doc)


def test_outputs_added_later_bring_their_transfers_and_keep_the_earlier_ones() -> None:
    run = _run(transfers={"out": SUMMARY})
    db = BundleLink("db", "dumps", new_ksuid())
    later = run.finished("Succeeded", 0, (db,), transfers={"db": SUMMARY})
    assert set(later.transfers) == {"out", "db"} and later.check() is later
