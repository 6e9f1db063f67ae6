"""The ``datarun-sidecar`` command leaves with ``os._exit`` once its lifecycle is over (datarun_sidecar.cli.entry):
the exit code, the result files and everything written to stdout and stderr must still all be there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from datarun.repo import Client
from datarun.store import LocalStore

SIDECAR = Path(sys.executable).parent / "datarun-sidecar"  # the console script, as the image runs it


def test_the_console_script_is_the_entry_that_exits_at_once() -> None:
    text = SIDECAR.read_text()
    assert "from datarun_sidecar.cli import entry" in text, text


def test_buffered_output_and_the_code_survive_the_fast_exit(tmp_path: Path) -> None:
    # stdout to a pipe is block-buffered: without the flush before os._exit this line would be lost.
    script = (
        "import sys; from datarun_sidecar import cli; print('said before the end'); "
        "sys.argv = ['datarun-sidecar', 'fuse', '-c', sys.argv[1], '-d', 'repo create --repo r']; cli.entry()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in the images, buffered
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "coord")], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "said before the end\n"
    assert "only `config create`, `bundle mount` and `bundle upload` are allowed" in done.stderr


def run_sidecar(tmp: Path, store: Path, *commands: str) -> tuple[subprocess.Popen[str], Path]:
    coord = tmp / "coord"
    (coord / "app").mkdir(parents=True)
    (coord / "app" / "command").write_text("true\n")
    args = [str(SIDECAR), "fuse", "-c", str(coord), "--store", f"file://{store}"]
    args += ["--termination-log", str(tmp / "termination-log")]
    for command in commands:
        args += ["-d", command]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "DATARUN_CACHE_DIR": str(tmp / "cache")}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), coord


def test_an_upload_then_the_exit_keeps_the_result_and_the_transfer_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    Client(LocalStore(store), cache_dir=tmp_path / "cache").create_repo("out")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "a.txt").write_text("result\n")
    upload = f"bundle upload --repo out --path {tmp_path / 'outdir'} --message m --label latest"
    proc, coord = run_sidecar(tmp_path, store, f"config create --name x --store file://{store}", upload)
    # The wrapper's part: the app ended with 0 (no mounts, so the sidecar is ready at once).
    (coord / "initupload").write_text("0\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads((coord / "fuse" / "result.json").read_text())
    assert result["status"] == "ok" and result["outputs"][0]["uploaded"] is True
    assert json.loads((tmp_path / "termination-log").read_text()) == result
    assert (coord / "fuse" / "uploaddone").read_text() == "ok\n"
    (transfer,) = [json.loads(x) for x in err.splitlines() if '"event":"transfer"' in x]
    assert transfer["bundle"] == result["outputs"][0]["bundle"]
    client = Client(LocalStore(store), cache_dir=tmp_path / "cache2")
    assert client.resolve("out", label="latest").id == result["outputs"][0]["bundle"]


def test_a_failed_prepare_still_exits_1_with_its_result(tmp_path: Path) -> None:
    store = tmp_path / "store"
    Client(LocalStore(store), cache_dir=tmp_path / "cache").create_repo("in")
    proc, coord = run_sidecar(tmp_path, store, f"bundle mount --repo in --label nope --mount {tmp_path / 'mnt'}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "label `nope` not found" in (coord / "fuse" / "failed").read_text()
    assert (coord / "fuse" / "uploaddone").read_text() == "failed\n"
    assert json.loads((tmp_path / "termination-log").read_text())["status"] == "failed"
