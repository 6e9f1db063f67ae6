"""`datarun web` as a user starts it: a process serving on loopback until stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from datarun.repo import Client
from datarun.store import LocalStore
from tests.web.conftest import _free_port


def test_datarun_web_serves_the_store_on_loopback(tmp_path: Path) -> None:
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("shown", "a repo to see")
    client.close()
    port = _free_port()
    env = {**os.environ, "DATARUN_HOME": str(tmp_path / "home"), "DATARUN_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "datarun.cli.main", "--store", f"file://{tmp_path / 'store'}", "web"]
    proc = subprocess.Popen([*argv, "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = response.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "datarun web did not answer"
                time.sleep(0.1)
        assert "a repo to see" in body
        # Loopback only by default: the kernel's table shows the listener on 127.0.0.1 and nowhere else.
        assert listeners(port) == ["127.0.0.1"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in err and "read-only" in err


def listeners(port: int) -> list[str]:
    """The IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.append(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found
