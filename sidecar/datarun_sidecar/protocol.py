"""The coordination directory, the sidecar side (see sidecar/PROTOCOL.md), and the one lifecycle
every sidecar follows: heartbeat -> prepare -> ready -> wait for the app -> upload -> report.

Everything is a small file written atomically (temp + rename), so a reader never sees half a
marker. The wrapper's side of the same protocol is ``wrap_application.sh``; its exit codes
(75/76/77) are its own, and the operator reads them (``datarun_operator.wire``): a sidecar
exits 0 or 1 and says the rest in its result.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datarun import summary
from datarun.errors import DatarunError
from datarun.model import Bundle, RunRecord
from datarun.repo import Client, UploadResult, connect
from datarun.runs import BundleLink, CacheStamp, Run
from datarun_sidecar.runrecord import record_run

HEARTBEAT_SECONDS = 2.0
ENV_RUN_PARAMS = "DATARUN_RUN_PARAMS"
"""The run's params, a JSON object (any values), set by the operator (``datarun_operator.wire``)."""


class SidecarError(Exception):
    """A sidecar cannot do its job; the message says why, for the wrapper, the result and the user."""


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
    run: str = ""
    """The run record (datarun.runs) that names these uploads, once written."""
    run_error: str = ""
    """Why the run record could not be written (the uploads stand; see sidecar/runrecord.py)."""
    transfers: dict[str, summary.TransferSummary] = field(default_factory=dict)
    """Each uploaded output's transfer summary, by output name, for the run record (not in
    ``to_json``: the termination message has room for bundle ids, not for statistics)."""

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
            **({"run": self.run} if self.run else {}),
            **({"runError": self.run_error} if self.run_error else {}),
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
        if result.run_error:
            short["runError"] = clip(result.run_error, size or 40)
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
        **({"run": result.run} if result.run else {}),
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


# -- the run's provenance ---------------------------------------------------------------------


def run_params(env: Mapping[str, str]) -> dict[str, Any]:
    """The params the operator passed in ``DATARUN_RUN_PARAMS``; none when it is unset."""
    raw = env.get(ENV_RUN_PARAMS, "")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        data, detail = None, f"not JSON ({err})"
    else:
        detail = "not a JSON object"
    if not isinstance(data, dict):
        raise SidecarError(f'{ENV_RUN_PARAMS}: {detail}; it must look like {{"lr": 0.1}} (the operator sets it)')
    return data


def run_record(coord: Path, env: Mapping[str, str], app_code: int | None, params: Mapping[str, Any]) -> RunRecord:
    """The run as the bundles' provenance records it: who (``DATARUN_RUN_ID``), what (the app's
    command, as the wrapper wrote it, and ``DATARUN_IMAGE``), with which params, and how it ended."""
    try:
        command = [line for line in (coord / "app" / "command").read_text().splitlines() if line]
    except OSError:
        command = []
    return RunRecord(
        run_id=env.get("DATARUN_RUN_ID", ""),
        command=tuple(command),
        image=env.get("DATARUN_IMAGE", ""),
        exit_code=app_code,
        params=dict(params),
    )


# -- the lifecycle ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlannedOutput:
    """One output a sidecar means to upload once the app has ended."""

    name: str
    repo: str
    path: str = ""
    label: str = ""
    skipped_reason: str = ""
    """Why it is not uploaded (the app failed, nowhere to upload to); empty: upload it."""
    upload: Callable[[Client, RunRecord], UploadResult]


class Sidecar(Protocol):
    """What a sidecar brings to :func:`run_lifecycle`; the order, the markers and the reports are the
    lifecycle's."""

    kind: str
    ready_marker: str
    """datamon's marker name (``mountdone``, ``dbstarted``), for scripts that still wait on it."""
    coord: Coordination
    store: str | None
    termination_log: Path | None
    app_heartbeat_timeout: float

    def prepare(self) -> dict[str, Any]:
        """Get ready for the app (mount, restore); the details go into the ``ready`` marker.
        Raises SidecarError or DatarunError: the app is then never started. It connects to the
        store itself: the fuse sidecar's ``config create`` must come first."""
        ...

    def app_ended(self) -> None:
        """Called once the app has ended, before the uploads (the fuse sidecar unmounts)."""
        ...

    def outputs(self, app_code: int | None, why: str) -> Sequence[PlannedOutput]: ...

    def run_inputs(self) -> Sequence[BundleLink]:
        """The bundles the app read (mounted inputs, restored databases), for the run record."""
        ...

    def cache_stamp(self) -> CacheStamp | None:
        """The run cache's stamp for the run record the sidecar creates, if it keyed the run."""
        ...

    def recorded(self, client: Client, result: SidecarResult, run: Run | None) -> None:
        """After the run record of the uploads is written (None if it was not): the fuse sidecar
        enters the run in the run cache here, or on a cache hit names the reused bundles."""
        ...

    def linger(self) -> None:
        """After the result is reported; returns at once unless asked to keep the pod around."""
        ...

    def close(self) -> None:
        """Release what ``prepare`` made; called on every way out, even after a failed prepare."""
        ...


def upload_outputs(
    kind: str, app_code: int | None, planned: Sequence[PlannedOutput], client: Client, run: RunRecord
) -> SidecarResult:
    """Upload each planned output; a failed one is named in the result and the others still go."""
    result = SidecarResult(kind, app_code)
    for item in planned:
        out = OutputResult(name=item.name, repo=item.repo, path=item.path, label=item.label)
        result.outputs.append(out)
        if item.skipped_reason:
            out.skipped_reason = item.skipped_reason
            continue
        try:
            done = item.upload(client, run)
            out.bundle = done.bundle.id
            out.uploaded = True
            result.transfers[item.name] = done.summary
            summary.emit("transfer", transfer_fields(kind, out.name, done.bundle))
        except (DatarunError, SidecarError) as err:
            out.error = str(err)
    return result


def run_lifecycle(sidecar: Sidecar, env: Mapping[str, str] = os.environ) -> int:
    """heartbeat -> prepare -> ready -> wait for the app -> upload -> report; 0 if all went well, else 1."""
    coord = sidecar.coord
    started = time.time()
    coord.start_heartbeat()
    try:
        try:
            params = run_params(env)
            details = sidecar.prepare()
        except (DatarunError, SidecarError) as err:
            coord.report_failed(str(err))
            coord.report_result(SidecarResult(sidecar.kind, None, errors=[str(err)]), sidecar.termination_log)
            return 1
        coord.report_ready(details, sidecar.ready_marker)
        code, why = coord.wait_for_app_end(sidecar.app_heartbeat_timeout)
        sidecar.app_ended()
        run = run_record(coord.root, env, code, params)
        planned = sidecar.outputs(code, why)
        try:
            client = connect(sidecar.store)
        except DatarunError as err:
            result = SidecarResult(sidecar.kind, code, errors=[f"store: {err}"])
        else:
            with contextlib.closing(client):
                result = upload_outputs(sidecar.kind, code, planned, client, run)
                inputs = sidecar.run_inputs()
                stamp = sidecar.cache_stamp()
                record = record_run(
                    client, result, started=started, inputs=inputs, command=run.command, env=env, cache=stamp
                )
                sidecar.recorded(client, result, record)
        coord.report_result(result, sidecar.termination_log)
        sidecar.linger()
        return 0 if result.ok else 1
    finally:
        sidecar.close()
        coord.stop_heartbeat()
