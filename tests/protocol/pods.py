"""A pod of the protocol tier: the wrapper and the fuse sidecar as separate processes sharing a
coordination folder, over a local store holding `in@v1` (numbers.txt) and an empty `out`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datarun.repo import Client
from datarun.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "wrap_application.sh"


class Pod:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.coord = tmp / "coord"
        self.store = tmp / "store"
        self.env = {
            **os.environ,
            "DATARUN_CACHE_DIR": str(tmp / "cache"),
            "DATARUN_CONFIG": str(tmp / "c.yaml"),
            "DATARUN_HOME": str(tmp / "home"),
            # What the operator's builder sets (datarun_operator.wire.sidecar_env).
            "DATARUN_RUN_ID": "team/job/uid-1",
            "DATARUN_IMAGE": "busybox:1.36",
            "DATARUN_RUN_PARAMS": '{"lr":"0.1","tag":"a b"}',
        }
        client = Client(LocalStore(self.store), cache_dir=tmp / "cache")
        client.create_repo("in")
        client.create_repo("out")
        src = tmp / "input-src"
        src.mkdir()
        (src / "numbers.txt").write_text("1\n2\n3\n")
        self.input_bundle = client.upload("in", src, "input", label="v1").bundle.id
        client.close()

    def sidecar(self, *commands: str) -> subprocess.Popen[bytes]:
        args = [
            sys.executable,
            "-m",
            "datarun_sidecar.cli",
            "fuse",
            "-c",
            str(self.coord),
            "--store",
            f"file://{self.store}",
            "--termination-log",
            str(self.tmp / "termination-log"),
            "--app-heartbeat-timeout",
            "10",
        ]
        for command in commands:
            args += ["-d", command]
        return subprocess.Popen(args, env=self.env, stderr=subprocess.PIPE)

    def wrap(self, script: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(WRAPPER), "-c", str(self.coord), "-b", "fuse", *extra, "--", "sh", "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            check=False,
        )

    def result(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.coord / "fuse" / "result.json").read_text())
        return data


def fuse_pod(tmp_path: Path) -> Pod:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the protocol tier mounts for real: apt-get install fuse3")
        pytest.skip("no FUSE here")
    return Pod(tmp_path)


def fuse_commands(pod: Pod, *, on_failure: bool = False) -> list[str]:
    flag = " --upload-on-failure" if on_failure else ""
    return [
        'config create --name "Coord" --email coord@example.org',
        f"bundle mount --repo in --label v1 --mount {pod.tmp / 'mnt'} --stream",
        f'bundle upload --path {pod.tmp / "outdir"} --message "result of the run" --repo out --label latest{flag}',
    ]
