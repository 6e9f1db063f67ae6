"""Pure parser: a Pod's status becomes the run's result (phase, reason, outputs, exit code).

Sidecars write their result (sidecar/PROTOCOL.md) to /dev/termination-log; the kubelet copies it
into the pod status, where :func:`parse_pod_result` reads it, together with the wrapper's exit
code (:data:`datarun_operator.wire.WRAPPER_EXIT_CODES`) and the outputs annotation the builder
wrote. No I/O and no kopf here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datarun_operator.builder import ANNOTATION_OUTPUTS, MAIN, SIDECARS
from datarun_operator.models import OutputStatus, Phase
from datarun_operator.wire import EXIT_NO_ANSWER, EXIT_NOT_READY, WRAPPER_EXIT_CODES

MESSAGE_LIMIT = 1024


@dataclass(frozen=True, kw_only=True)
class SidecarReport:
    """One sidecar container at the end: its exit and its termination message, parsed."""

    container: str
    exit_code: int | None
    reason: str
    result: Mapping[str, Any] | None
    problem: str = ""
    """Why ``result`` is None although the container ended (missing or unreadable message)."""


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a pod says about its run; the handlers turn it into the DataRun's status."""

    phase: Phase
    reason: str
    message: str
    outputs: tuple[OutputStatus, ...] = ()
    app_exit_code: int | None = None
    start_time: str | None = None
    completion_time: str | None = None


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _terminated(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not status:
        return None
    state = status.get("state") or {}
    term = state.get("terminated")
    return term if isinstance(term, dict) else None


def _waiting(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not status:
        return None
    wait = (status.get("state") or {}).get("waiting")
    return wait if isinstance(wait, dict) else None


def _sidecar_report(name: str, status: Mapping[str, Any] | None) -> SidecarReport:
    term = _terminated(status)
    if term is None:
        return SidecarReport(container=name, exit_code=None, reason="", result=None, problem="it did not end")
    code = term.get("exitCode")
    reason = str(term.get("reason") or "")
    text = str(term.get("message") or "").strip()
    if not text:
        why = f"exited with code {code}" + (f" ({reason})" if reason else "") + " without a result"
        return SidecarReport(container=name, exit_code=code, reason=reason, result=None, problem=why)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        why = f"its termination message is not JSON (truncated at 4096 bytes?): {text[:80]!r}"
        return SidecarReport(container=name, exit_code=code, reason=reason, result=None, problem=why)
    if not isinstance(data, dict) or "status" not in data:
        return SidecarReport(
            container=name, exit_code=code, reason=reason, result=None, problem="its termination message has no status"
        )
    return SidecarReport(container=name, exit_code=code, reason=reason, result=data)


def _declared_outputs(pod: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OUTPUTS, "[]")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _outputs(pod: Mapping[str, Any], reports: list[SidecarReport]) -> tuple[tuple[OutputStatus, ...], set[str]]:
    """Every declared output with its bundle or why it has none; and the names of failed uploads."""
    declared = _declared_outputs(pod)
    # The fuse sidecar names an output by its label or path; the DataRun's name comes from the
    # annotation the builder wrote, matched on (repo, path). Databases are named by their id.
    by_location = {(d.get("repo", ""), d.get("path", "")): d.get("name", "") for d in declared if d.get("path")}
    out: dict[str, OutputStatus] = {}
    failed: set[str] = set()
    for report in reports:
        if report.result is None:
            continue
        for item in report.result.get("outputs") or []:
            if not isinstance(item, dict):
                continue
            repo, path = str(item.get("repo", "")), str(item.get("path", ""))
            if not repo:
                continue  # a database without an output repo: nothing was meant to be uploaded
            name = by_location.get((repo, path)) if path else None
            name = name or str(item.get("name", ""))
            if item.get("error"):
                failed.add(name)
            out[name] = OutputStatus(
                name=name,
                repo=repo,
                bundle=str(item.get("bundle") or "") if item.get("uploaded") else "",
                label=str(item.get("label") or ""),
                error=str(item.get("error") or item.get("skipped_reason") or ""),
            )
    for d in declared:
        name = d.get("name", "")
        if name and name not in out:
            out[name] = OutputStatus(name=name, repo=d.get("repo", ""), error="no result from the sidecar")
    order = {d.get("name", ""): i for i, d in enumerate(declared)}
    return tuple(sorted(out.values(), key=lambda o: (order.get(o.name, len(order)), o.name))), failed


def _pending_message(pod: Mapping[str, Any]) -> tuple[str, str]:
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), _clip(str(cond.get("message") or "not scheduled yet"))
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            wait = _waiting(cs)
            if wait and wait.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
                detail = f": {wait['message']}" if wait.get("message") else ""
                return str(wait["reason"]), _clip(f"container {cs.get('name')}: {wait['reason']}{detail}")
    return "PodPending", "waiting for the pod to start"


def app_image_id(pod: Mapping[str, Any] | None) -> str | None:
    """The digest the kubelet ran the app's image by (``imageID``, `repo@sha256:...`), if any.
    It is what a run cache key may use for an image given by tag only."""
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == MAIN:
            image_id = str(cs.get("imageID") or "")
            # Runtimes spell it `docker-pullable://repo@sha256:...` or plain; only a digest counts.
            return image_id.split("://", 1)[-1] if "@sha256:" in image_id else None
    return None


def settled_phase(pod: Mapping[str, Any]) -> str:
    """The pod's phase, or the final one it is bound to report once every container has ended.

    With ``restartPolicy: Never`` nothing runs again once all containers (init ones included, so
    that a native sidecar still running keeps the pod open) have terminated: the phase can only
    become Succeeded (every exit code 0) or Failed, the rule the kubelet itself applies. But the
    kubelet reports that phase only after it has torn the pod down (sandbox, network), seconds
    later on a busy node, while the containers' ``terminated`` states, exit codes and termination
    messages are in the status already; everything the run's result needs.
    """
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    spec = pod.get("spec") or {}
    if phase in ("Succeeded", "Failed") or spec.get("restartPolicy") != "Never":
        return phase
    statuses = {
        cs.get("name"): cs for key in ("initContainerStatuses", "containerStatuses") for cs in status.get(key) or []
    }
    names = [c.get("name") for key in ("initContainers", "containers") for c in spec.get(key) or []]
    ended = [_terminated(statuses.get(name)) for name in names]
    if not names or any(term is None for term in ended):
        return phase
    return "Succeeded" if all(term and term.get("exitCode") == 0 for term in ended) else "Failed"


def parse_pod_result(pod: Mapping[str, Any]) -> RunResult:
    """Read a run's state from its pod: the phase, the outputs from the sidecars' termination
    messages, and the reason, from the exit codes of the wrapper (75/76/77, or the app's own)."""
    status = pod.get("status") or {}
    pod_phase = settled_phase(pod)
    start = status.get("startTime")
    statuses = {cs.get("name"): cs for cs in status.get("containerStatuses") or []}
    main_term = _terminated(statuses.get(MAIN))
    main_code = main_term.get("exitCode") if main_term else None
    sidecar_names = [
        c.get("name") for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") in SIDECARS
    ]

    if pod_phase not in ("Succeeded", "Failed"):
        if pod_phase == "Running":
            if main_term is not None:
                return RunResult(
                    phase=Phase.UPLOADING,
                    reason="AppEnded",
                    message=f"the app exited with code {main_code}; the sidecars are uploading",
                    app_exit_code=main_code if main_code not in (EXIT_NOT_READY, EXIT_NO_ANSWER) else None,
                    start_time=start,
                )
            if (statuses.get(MAIN) or {}).get("state", {}).get("running") is not None:
                return RunResult(phase=Phase.RUNNING, reason="Running", message="the app is running", start_time=start)
        if pod_phase == "Unknown":
            return RunResult(
                phase=Phase.RUNNING,
                reason="PodUnknown",
                message=_clip(str(status.get("message") or "the pod's node stopped reporting")),
                start_time=start,
            )
        reason, message = _pending_message(pod)
        return RunResult(phase=Phase.PENDING, reason=reason, message=message, start_time=start)

    reports = [_sidecar_report(name, statuses.get(name)) for name in sidecar_names]
    outputs, failed = _outputs(pod, reports)
    finished = [
        str(t["finishedAt"]) for cs in statuses.values() if (t := _terminated(cs)) is not None and t.get("finishedAt")
    ]
    end = max(finished) if finished else None
    codes = [r.result.get("appExitCode") for r in reports if r.result is not None]
    known = [c for c in codes if isinstance(c, int)]
    app_code: int | None = known[0] if known else None
    if app_code is None and main_code is not None and (not reports or main_code not in WRAPPER_EXIT_CODES):
        app_code = main_code  # without sidecars there is no wrapper: every code is the app's
    problems = [f"{r.container}: {r.problem}" for r in reports if r.result is None]
    failed_outputs = [o for o in outputs if o.name in failed]

    def result(phase: Phase, reason: str, message: str) -> RunResult:
        return RunResult(
            phase=phase,
            reason=reason,
            message=_clip(message),
            outputs=outputs,
            app_exit_code=app_code,
            start_time=start,
            completion_time=end,
        )

    if pod_phase == "Succeeded":
        if problems:
            return result(
                Phase.FAILED,
                "ResultUnreadable",
                "the pod succeeded but a result is missing, so output bundle ids are unknown (the uploads may have "
                "happened and labels moved): " + "; ".join(problems),
            )
        uploaded = sum(1 for o in outputs if o.bundle)
        return result(Phase.SUCCEEDED, "Succeeded", f"the app succeeded; {uploaded} of {len(outputs)} outputs uploaded")

    # -- the pod failed: find the first cause ---------------------------------------------------
    if status.get("reason") in ("Evicted", "DeadlineExceeded", "Preempting", "NodeLost", "Shutdown"):
        return result(Phase.FAILED, f"Pod{status['reason']}", str(status.get("message") or status["reason"]))
    for cs in status.get("initContainerStatuses") or []:
        term = _terminated(cs)
        if term is not None and term.get("exitCode") not in (0, None):
            detail = str(term.get("message") or term.get("reason") or "")
            return result(
                Phase.FAILED,
                "InitFailed",
                f"init container {cs.get('name')} exited with code {term.get('exitCode')}"
                f" (is the wrapper image right?): {detail}",
            )
    if main_term is None:
        return result(Phase.FAILED, "PodFailed", str(status.get("message") or "the pod failed before the app ended"))
    not_ready = [
        r for r in reports if r.result is not None and r.result.get("appExitCode") is None and r.result.get("errors")
    ]
    if main_code == EXIT_NOT_READY and app_code is None:
        why = [f"{r.container}: {'; '.join(map(str, r.result.get('errors') or []))}" for r in not_ready if r.result]
        why += problems
        return result(
            Phase.FAILED, "SidecarNotReady", "a sidecar failed before the app started: " + ("; ".join(why) or "?")
        )
    if main_term.get("reason") == "OOMKilled":
        return result(
            Phase.FAILED, "AppOOMKilled", "the app ran out of memory (OOMKilled); raise resources.limits.memory"
        )
    if app_code is not None and app_code != 0:
        tail = str(main_term.get("message") or "").strip()
        message = f"the app exited with code {app_code}" + (f": {tail}" if tail else "")
        return result(Phase.FAILED, "AppFailed", message)
    if failed_outputs:
        details = "; ".join(f"output `{o.name}` ({o.repo}): {o.error}" for o in failed_outputs)
        return result(Phase.FAILED, "UploadFailed", details)
    if main_code == EXIT_NO_ANSWER or problems:
        return result(
            Phase.FAILED,
            "SidecarUnresponsive",
            "a sidecar stopped answering before it reported its result: " + ("; ".join(problems) or "?"),
        )
    for report in reports:
        if report.exit_code not in (0, None):
            return result(
                Phase.FAILED, "SidecarFailed", f"{report.container} exited with code {report.exit_code} {report.reason}"
            )
    return result(Phase.FAILED, "PodFailed", str(status.get("message") or f"the wrapper exited with code {main_code}"))
