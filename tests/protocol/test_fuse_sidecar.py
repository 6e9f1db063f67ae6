"""The wrapper and the fuse sidecar as separate processes sharing a coordination folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from datarun.repo import Client
from datarun.store import LocalStore
from tests.protocol.pods import Pod, fuse_commands


def test_happy_path_inputs_readable_outputs_labelled_with_provenance(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    done = pod.wrap("awk '{s+=$1} END {print s}' mnt/numbers.txt > outdir/sum.txt")
    assert done.returncode == 0, done.stderr
    assert sidecar.wait(timeout=60) == 0
    result = pod.result()
    assert result["status"] == "ok" and result["appExitCode"] == 0
    outputs = result["outputs"]
    assert isinstance(outputs, list) and outputs[0]["uploaded"] is True
    client = Client(LocalStore(pod.store), cache_dir=pod.tmp / "cache2")
    bundle = client.resolve("out", label="latest")
    assert bundle.id == outputs[0]["bundle"]
    assert [ref.bundle for ref in bundle.provenance.inputs] == [pod.input_bundle]
    assert bundle.provenance.run is not None and bundle.provenance.run.exit_code == 0
    assert "awk" in " ".join(bundle.provenance.run.command)
    assert bundle.provenance.run.params == {"lr": "0.1", "tag": "a b"}
    assert (bundle.provenance.run.run_id, bundle.provenance.run.image) == ("team/job/uid-1", "busybox:1.36")
    dest = pod.tmp / "check"
    client.download(bundle, dest)
    assert (dest / "sum.txt").read_text() == "6\n"
    # The transfer summary: a JSON log line on stderr, and the same numbers in the bundle's provenance.
    assert sidecar.stderr is not None
    lines = [json.loads(x) for x in sidecar.stderr.read().decode().splitlines() if x.startswith("{")]
    (transfer,) = [x for x in lines if x.get("event") == "transfer"]
    assert transfer["sidecar"] == "fuse" and transfer["bundle"] == bundle.id and transfer["bytes"] == 2
    assert transfer["chunks_new"] + transfer["chunks_deduplicated"] == 1 and transfer["seconds"] > 0
    assert bundle.provenance.transfer["bytes"] == 2 and bundle.provenance.transfer["files"] == 1
    assert json.loads((pod.tmp / "termination-log").read_text())["status"] == "ok"
    assert (pod.coord / "mountdone").exists(), "datamon's marker name is kept"
    assert not os.path.ismount(pod.tmp / "mnt")


def test_app_failure_passes_its_code_and_uploads_nothing(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    done = pod.wrap("echo partial > outdir/x; exit 3")
    assert done.returncode == 3
    assert sidecar.wait(timeout=60) == 0
    outputs = pod.result()["outputs"]
    assert isinstance(outputs, list) and outputs[0]["uploaded"] is False
    assert "uploadOnFailure is off" in outputs[0]["skipped_reason"]
    assert Client(LocalStore(pod.store), cache_dir=pod.tmp / "c3").list_bundles("out") == []


def test_upload_on_failure_is_opt_in_per_output(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod, on_failure=True))
    done = pod.wrap("echo partial > outdir/x; exit 4")
    assert done.returncode == 4
    assert sidecar.wait(timeout=60) == 0
    bundles = Client(LocalStore(pod.store), cache_dir=pod.tmp / "c3").list_bundles("out")
    assert len(bundles) == 1 and bundles[0].provenance.run is not None
    assert bundles[0].provenance.run.exit_code == 4


def test_failed_upload_gives_the_documented_code_and_names_the_output(pod: Pod) -> None:
    sidecar = pod.sidecar(*fuse_commands(pod))  # outdir is never created: the upload must fail
    done = pod.wrap("true")
    assert done.returncode == 75, done.stderr
    assert sidecar.wait(timeout=60) == 1
    result = pod.result()
    outputs = result["outputs"]
    assert result["status"] == "failed" and isinstance(outputs, list)
    assert "does not exist" in outputs[0]["error"] and outputs[0]["repo"] == "out"


def test_killed_sidecar_does_not_hang_the_wrapper(pod: Pod) -> None:
    (pod.tmp / "outdir").mkdir()
    sidecar = pod.sidecar(*fuse_commands(pod))
    started = time.monotonic()
    deadline = started + 30
    while not (pod.coord / "fuse" / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sidecar.send_signal(signal.SIGKILL)
    sidecar.wait()
    done = pod.wrap("sleep 1", "-h", "4", timeout=60)
    assert done.returncode == 77, done.stderr
    assert "stopped sending heartbeats" in done.stderr
    subprocess.run(["fusermount3", "-uz", str(pod.tmp / "mnt")], check=False, capture_output=True)


def test_sigterm_unmounts_without_datarun_cli_handler(pod: Pod) -> None:
    """The kubelet's SIGTERM on pod deletion: the sidecar unmounts and exits 143, by its own handler (no
    `config create`, so datarun's CLI never ran in-process to install one)."""
    mount = pod.tmp / "mnt"
    sidecar = pod.sidecar(f"bundle mount --repo in --label v1 --mount {mount}")
    deadline = time.monotonic() + 30
    while not (pod.coord / "fuse" / "ready").exists():
        assert sidecar.poll() is None and time.monotonic() < deadline, sidecar.stderr
        time.sleep(0.05)
    assert (mount / "numbers.txt").read_text() == "1\n2\n3\n"
    sidecar.send_signal(signal.SIGTERM)
    _, stderr = sidecar.communicate(timeout=30)
    assert sidecar.returncode == 143, stderr.decode()
    assert b"terminated (SIGTERM)" in stderr
    with open("/proc/self/mountinfo") as f:
        assert str(mount) not in f.read(), "SIGTERM left the FUSE mount behind"


def test_bad_mount_fails_fast_and_the_wrapper_reports_it(pod: Pod) -> None:
    sidecar = pod.sidecar(f"bundle mount --repo in --label missing --mount {pod.tmp / 'mnt'}")
    done = pod.wrap("true", "-r", "30")
    assert done.returncode == 76
    assert "label `missing` not found" in done.stderr
    assert sidecar.wait(timeout=30) == 1


def test_sidecar_rejects_malformed_commands() -> None:
    from datarun_sidecar.fuse import SidecarUsageError, parse_commands

    with pytest.raises(SidecarUsageError, match="at most one"):
        parse_commands(["config create --name a", "config create --name b"])
    with pytest.raises(SidecarUsageError, match="exactly one of --bundle or --label"):
        parse_commands(["bundle mount --repo r --mount /m"])
    with pytest.raises(SidecarUsageError, match="only `config create`"):
        parse_commands(["repo create --repo r"])
    plan = parse_commands(['bundle upload --path /o --message "a b" --repo r --upload-on-failure'])
    assert plan.uploads[0].message == "a b" and plan.uploads[0].upload_on_failure
