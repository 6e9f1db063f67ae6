"""The fuse and postgres sidecars write a run record for their uploads, read back through datarun's API."""

from __future__ import annotations

import json
from pathlib import Path

from datarun.repo import Client
from datarun.runs import Run
from datarun.store import LocalStore
from tests.protocol.pods import Pod, fuse_commands
from tests.protocol.test_postgres_sidecar import _free_port, _need_postgres, _run_pod, open_tmp

__all__ = ["open_tmp"]  # the fixture is registered by import (`pod` is in conftest.py)


def _client(p: Pod, name: str) -> Client:
    return Client(LocalStore(p.store), cache_dir=p.tmp / name)


def test_an_upload_outside_a_datarun_creates_a_run_with_inputs_outputs_and_the_command(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    done = pod.wrap("awk '{s+=$1} END {print s}' mnt/numbers.txt > outdir/sum.txt")
    assert done.returncode == 0, done.stderr
    assert sidecar.wait(timeout=60) == 0
    result = pod.result()
    run_id = str(result["run"])
    outputs = result["outputs"]
    assert isinstance(outputs, list)
    run = _client(pod, "c2").runs.get(run_id)
    assert (run.phase, run.exit_code, run.version) == ("Succeeded", 0, 1)
    assert [(o.repo, o.bundle) for o in run.outputs] == [("out", outputs[0]["bundle"])]
    assert [(i.name, i.repo, i.bundle) for i in run.inputs] == [("mnt", "in", pod.input_bundle)]
    assert "awk" in " ".join(run.command)
    assert run.end is not None and run.start <= run.end
    assert run.annotations == {"datarun.io/sidecar": "fuse"}
    [out] = run.outputs
    bundle = _client(pod, "c3").get_bundle("out", out.bundle)
    assert run.transfers[out.name].to_json() == bundle.provenance.transfer, "the bundle's summary, in the run"
    assert (
        run.transfers[out.name].files == 1
        and run.transfers[out.name].bytes == (pod.tmp / "outdir" / "sum.txt").stat().st_size
    )


def test_a_failed_app_is_recorded_as_a_failed_run_without_outputs(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    assert pod.wrap("exit 3").returncode == 3
    assert sidecar.wait(timeout=60) == 0
    run = _client(pod, "c2").runs.get(str(pod.result()["run"]))
    assert (run.phase, run.exit_code, run.outputs) == ("Failed", 3, ())


def test_in_a_datarun_pod_the_sidecar_adds_its_outputs_to_the_operators_run(pod: Pod, tmp_path: Path) -> None:
    client = _client(pod, "c1")
    created = client.runs.create(Run(id=client.runs.new_id(), start="2023-06-09T14:28:56Z", title="ns/job"))
    pod.env["DATARUN_RUN_RECORD"] = created.id
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    assert pod.wrap("echo 42 > outdir/answer.txt").returncode == 0
    assert sidecar.wait(timeout=60) == 0
    assert pod.result()["run"] == created.id
    outputs = pod.result()["outputs"]
    assert isinstance(outputs, list)
    run = client.runs.get(created.id)
    assert run.version == 2 and run.phase == "Running", "the operator, not the sidecar, ends the run"
    assert [(o.repo, o.bundle) for o in run.outputs] == [("out", outputs[0]["bundle"])]
    assert list(run.transfers) == [run.outputs[0].name] and run.transfers[run.outputs[0].name].files == 1


def test_a_postgres_dump_upload_records_its_source_and_its_dump(open_tmp: Path) -> None:
    _need_postgres()
    Client(LocalStore(open_tmp / "store"), cache_dir=open_tmp / "cache").create_repo("db")
    port = _free_port()
    code, first, _ = _run_pod(open_tmp, "one", f";:p:{port};r:db;l:latest", "CREATE TABLE t (id int)", port)
    assert code == 0 and first["status"] == "ok"
    port2 = _free_port()
    code, second, _ = _run_pod(open_tmp, "two", f";:p:{port2};sr:db;sl:latest;r:db", "SELECT 1", port2)
    assert code == 0 and second["status"] == "ok"
    runs = Client(LocalStore(open_tmp / "store"), cache_dir=open_tmp / "cache2").runs
    dumps = [o["bundle"] for r in (first, second) for o in r["outputs"]]  # type: ignore[attr-defined]
    one, two = runs.get(str(first["run"])), runs.get(str(second["run"]))
    assert (one.phase, one.exit_code, one.inputs) == ("Succeeded", 0, ())
    assert [(o.name, o.repo, o.bundle) for o in one.outputs] == [("main", "db", dumps[0])]
    assert one.transfers["main"].bytes > 0 and one.transfers["main"].files >= 1, "the dump's transfer"
    assert [(i.name, i.repo, i.bundle) for i in two.inputs] == [("main", "db", dumps[0])], "the restored dump"
    assert [(o.name, o.repo, o.bundle) for o in two.outputs] == [("main", "db", dumps[1])]
    assert two.annotations == {"datarun.io/sidecar": "postgres"}


def test_the_termination_message_keeps_the_run_and_clips_its_error() -> None:
    from datarun_sidecar.protocol import OutputResult, SidecarResult, termination_message

    result = SidecarResult("fuse", 0, [OutputResult("o", "out", "/data/o", error="x" * 5000)])
    result.run, result.run_error = "R" * 27, "e" * 5000
    short = json.loads(termination_message(result))
    assert short["run"] == "R" * 27 and short["truncated"] is True
    assert len(short["runError"]) <= 300
    many = SidecarResult("fuse", 0, [OutputResult(f"o{i}", "out", f"/p{i}", bundle="B" * 27) for i in range(200)])
    many.run = "R" * 27
    assert json.loads(termination_message(many))["run"] == "R" * 27, "even the minimal form names the run"


def test_a_named_record_that_no_operator_wrote_is_created_under_that_id(pod: Pod) -> None:
    from datarun.ids import new_ksuid

    pod.env["DATARUN_RUN_RECORD"] = wanted = new_ksuid()
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    assert pod.wrap("echo 1 > outdir/x").returncode == 0
    assert sidecar.wait(timeout=60) == 0
    assert pod.result()["run"] == wanted and "runError" not in pod.result()
    run = _client(pod, "c2").runs.get(wanted)
    assert (run.phase, run.version, len(run.outputs)) == ("Succeeded", 1, 1)
