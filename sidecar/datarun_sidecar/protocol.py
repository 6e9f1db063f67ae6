"""The coordination directory, the sidecar side (see sidecar/PROTOCOL.md).

Everything is a small file written atomically (temp + rename), so a reader never sees half a
marker. The wrapper's side of the same protocol is ``wrap_application.sh``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 2.0
EXIT_UPLOAD_FAILED = 75
EXIT_NOT_READY = 76
EXIT_NO_ANSWER = 77


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class OutputResult:
    name: str
    repo: str
    path: str
    label: str = ""
    bundle: str = ""
    uploaded: bool = False
    skipped_reason: str = ""
    error: str = ""


@dataclass
class SidecarResult:
    kind: str
    app_exit_code: int | None
    outputs: list[OutputResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not any(o.error for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": "ok" if self.ok else "failed",
            "appExitCode": self.app_exit_code,
            "outputs": [vars(o) for o in self.outputs],
            "errors": self.errors,
        }


class Coordination:
    """One sidecar's view of the shared folder."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.own = root / kind
        self.own.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- liveness ------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.is_set():
                write_atomic(self.own / "heartbeat", f"{int(time.time())}\n")
                self._stop.wait(HEARTBEAT_SECONDS)

        write_atomic(self.own / "heartbeat", f"{int(time.time())}\n")
        self._beat = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()

    # -- sidecar -> app --------------------------------------------------------------------

    def report_ready(self, details: dict[str, Any], legacy_marker: str) -> None:
        write_atomic(self.own / "ready", json.dumps(details) + "\n")
        # datamon's marker name, for scripts that still wait on it
        write_atomic(self.root / legacy_marker, "ready\n")

    def report_failed(self, message: str) -> None:
        write_atomic(self.own / "failed", message.replace("\n", " ") + "\n")

    def report_result(self, result: SidecarResult, termination_log: Path | None) -> None:
        payload = json.dumps(result.to_json())
        write_atomic(self.own / "result.json", payload + "\n")
        if termination_log is not None:
            # Kubernetes keeps at most 4096 bytes of a termination message; a missing file is
            # not worth failing the run over, the coordination folder has the full result.
            with contextlib.suppress(OSError):
                termination_log.write_text(payload[:4096])
        write_atomic(self.own / "uploaddone", ("ok" if result.ok else "failed") + "\n")

    # -- app -> sidecar --------------------------------------------------------------------

    def wait_for_app_end(self, app_heartbeat_timeout: float, poll: float = 0.1) -> tuple[int | None, str]:
        """Block until the wrapper writes ``initupload`` (the app's exit code).

        Returns (code, why). If the wrapper stops sending heartbeats (it was killed), the
        code is None: the app's outcome is unknown and is treated as a failure.
        """
        marker = self.root / "initupload"
        beat = self.root / "app" / "heartbeat"
        while True:
            if marker.exists():
                text = marker.read_text().strip()
                try:
                    return int(text.splitlines()[0]), "app ended"
                except (ValueError, IndexError):
                    return None, f"unreadable initupload {text!r}"
            if beat.exists():
                try:
                    last = int(beat.read_text().strip() or "0")
                except ValueError:
                    last = 0
                if time.time() - last > app_heartbeat_timeout:
                    return None, f"the wrapper stopped sending heartbeats for {app_heartbeat_timeout:.0f}s"
            time.sleep(poll)
