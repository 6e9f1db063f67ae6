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

from datarun.model import Bundle

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


TERMINATION_MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def termination_message(result: SidecarResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The result as JSON of at most ``limit`` bytes, always parseable.

    Cutting the JSON at the limit would leave the operator unable to read any bundle id, so
    a long result is shortened in steps instead: error texts are clipped, then the fields the
    operator can do without are dropped. Bundle ids, output names and the status always stay;
    ``"truncated": true`` says the full result is in the coordination folder.
    """
    full = result.to_json()
    text = json.dumps(full, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text

    def clip(value: str, size: int) -> str:
        return value if len(value) <= size else value[: size - 1] + "…"

    for size in (300, 120, 40, 0):
        outputs = [
            {
                "name": o.name,
                "repo": o.repo,
                "label": o.label,
                "bundle": o.bundle,
                "uploaded": o.uploaded,
                **({"error": clip(o.error, size)} if o.error and size else {"error": "failed"} if o.error else {}),
            }
            for o in result.outputs
        ]
        errors = [clip(e, size) for e in result.errors] if size else result.errors[:1] and ["see result.json"]
        short = {**full, "outputs": outputs, "errors": errors, "truncated": True}
        text = json.dumps(short, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) <= limit:
            return text
    # Hundreds of outputs: keep what the operator needs to name the bundles, as many as fit.
    minimal: dict[str, Any] = {
        "kind": result.kind,
        "status": full["status"],
        "appExitCode": result.app_exit_code,
        "outputs": [],
        "truncated": True,
        "outputsOmitted": 0,
    }
    named = [{"name": o.name, "bundle": o.bundle} for o in result.outputs if o.bundle]
    budget = limit - len(json.dumps(minimal, separators=(",", ":"))) - 16  # room for the omitted count
    for entry in named:
        cost = len(json.dumps(entry, separators=(",", ":")).encode()) + 1
        if cost > budget:
            break
        minimal["outputs"].append(entry)
        budget -= cost
    minimal["outputsOmitted"] = len(result.outputs) - len(minimal["outputs"])
    return json.dumps(minimal, separators=(",", ":"))


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
            # A missing file is not worth failing the run over: the coordination folder has the
            # full result.
            with contextlib.suppress(OSError):
                termination_log.write_text(termination_message(result))
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


def transfer_fields(sidecar: str, output: str, bundle: Bundle) -> dict[str, Any]:
    """The fields of a sidecar's ``transfer`` JSON log line: the bundle record's transfer summary
    (also kept in its provenance) with what names the output."""
    return {
        "sidecar": sidecar,
        "output": output,
        "repo": bundle.repo,
        "bundle": bundle.id,
        **bundle.provenance.transfer,
    }
