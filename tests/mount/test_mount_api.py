"""`Client.mount`: the Python API mounts a bundle the way the CLI does, and says what it served.

The mount blocks and takes SIGTERM to end, so it runs in a child Python process, which is
what a notebook or a sidecar calling the API would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mount.core_fixtures import Bundled

_SCRIPT = """
import json, sys
from pathlib import Path
from datarun.mount.runner import MountOptions
from datarun.repo import Client
from datarun.store import LocalStore

store, bundle_id, mountpoint, ready, cache, stream = sys.argv[1:]
with Client(LocalStore(Path(store)), cache_dir=Path(cache)) as client:
    bundle = client.get_bundle("r", bundle_id)
    options = MountOptions(stream=stream == "stream", ready_file=Path(ready))
    result = client.mount(bundle, mountpoint, options)
print(json.dumps({"bundle": result.bundle.id, "mountpoint": str(result.mountpoint), "files": result.files}))
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("stream", ["stream", "no-stream"])
def test_client_mount_serves_the_bundle_and_returns_what_it_mounted(bundled: Bundled, stream: str) -> None:
    point = bundled.tmp / f"mnt-api-{stream}"
    ready = bundled.tmp / f"ready-api-{stream}"
    cache = bundled.tmp / f"cache-api-{stream}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(bundled.store), bundled.bundle, str(point), str(ready), str(cache), stream],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DATARUN_CONFIG": str(bundled.tmp / "no.yaml")},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"mount exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''!r}")
            assert time.monotonic() < deadline, "mount not ready in 30 s"
            time.sleep(0.02)
        assert json.loads(ready.read_text())["bundle"] == bundled.bundle
        src = bundled.tmp / "src"
        for rel in ("big.bin", "docs/notes.txt", "docs/deep/small.bin"):
            assert _digest(point / rel) == _digest(src / rel), rel
        assert os.readlink(point / "link") == "docs/notes.txt"
        # Defaults the CLI used to fill in itself: the cache lives under the client's cache dir.
        assert (cache / "mount" / "inodes").is_dir()
        assert (cache / "mount" / "staged" / f"{bundled.bundle}.complete").exists() == (stream == "no-stream")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # Four regular files: big.bin, notes.txt, small.bin and tool.sh (the link and folders are not files).
    assert json.loads(out) == {"bundle": bundled.bundle, "mountpoint": str(point.absolute()), "files": 4}
    assert not os.path.ismount(point) and not ready.exists()
