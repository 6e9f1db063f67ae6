"""Real FUSE mounts of real bundles. Without /dev/fuse this tier fails under CI and skips elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datarun.repo import Client
from datarun.store import LocalStore


def _require_fuse() -> None:
    missing = [
        what
        for what, ok in [
            ("/dev/fuse", os.path.exists("/dev/fuse")),
            ("fusermount3", shutil.which("fusermount3") is not None),
        ]
        if not ok
    ]
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        missing.append("pyfuse3")
    if missing:
        reason = f"FUSE tier needs {', '.join(missing)}: apt-get install fuse3 libfuse3-dev; pip install pyfuse3"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class Mounted:
    path: Path
    proc: subprocess.Popen[bytes]
    ready_file: Path

    def unmount(self) -> int:
        if self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


@dataclass
class Bundled:
    tmp: Path
    store: Path
    client: Client
    bundle: str

    def mount(self, *extra: str) -> Mounted:
        point = self.tmp / f"mnt{time.monotonic_ns()}"
        ready = self.tmp / f"ready{time.monotonic_ns()}"
        env = {**os.environ, "DATARUN_CACHE_DIR": str(self.tmp / "cache"), "DATARUN_CONFIG": str(self.tmp / "no.yaml")}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datarun.cli.main",
                "--store",
                f"file://{self.store}",
                "bundle",
                "mount",
                "--repo",
                "r",
                "--bundle",
                self.bundle,
                "--mount",
                str(point),
                "--ready-file",
                str(ready),
                *extra,
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"mount exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''!r}")
            assert time.monotonic() < deadline, "mount not ready in 30 s"
            time.sleep(0.02)
        assert json.loads(ready.read_text())["bundle"] == self.bundle
        return Mounted(point, proc, ready)


def make_source(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "docs" / "notes.txt").write_text("compressible text\n" * 20_000)
    (root / "docs" / "deep" / "small.bin").write_bytes(os.urandom(5000))
    big = root / "big.bin"
    with big.open("wb") as out:
        for _ in range(40):
            out.write(os.urandom(1 << 20))
    tool = root / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (root / "link").symlink_to("docs/notes.txt")
    return root


@pytest.fixture
def bundled(tmp_path: Path) -> Iterator[Bundled]:
    _require_fuse()
    store = tmp_path / "store"
    client = Client(LocalStore(store), cache_dir=tmp_path / "upcache")
    client.create_repo("r")
    result = client.upload("r", make_source(tmp_path / "src"), "m")
    yield Bundled(tmp_path, store, client, result.bundle.id)
    client.close()
    for point in tmp_path.glob("mnt*"):
        if os.path.ismount(point):
            subprocess.run(["fusermount3", "-uz", str(point)], check=False)


__all__ = ["Bundled", "Mounted", "bundled", "signal"]
