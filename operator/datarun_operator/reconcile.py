"""The handlers' decisions, as pure functions: what to pin, what to write in status, which Events
to post, what the admission webhook says. The kopf handlers in :mod:`datarun_operator.handlers`
only fetch, call these, and send; tests call these directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from datarun.errors import DatarunError, NotFoundError, UsageError
from datarun.runs import Run
from datarun_operator.builder import pod_name
from datarun_operator.models import (
    Condition,
    ConditionStatus,
    DataRun,
    DataRunSpec,
    DataRunStatus,
    OutputStatus,
    Phase,
    SpecError,
)
from datarun_operator.result import RunResult, parse_pod_result
from datarun_operator.schema import dump

INPUTS_PINNED = "InputsPinned"
APP_COMPLETED = "AppCompleted"
OUTPUTS_UPLOADED = "OutputsUploaded"
CACHE_HIT = "CacheHit"
INPUT_INVALID = "InputInvalid"

# Pending reasons worth a Warning event: the run will not start until someone acts.
STUCK_REASONS = frozenset(
    {
        "Unschedulable",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the DataRun."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    """A merge patch for ``status`` (empty: nothing changed) and the Events that go with it."""

    patch: dict[str, Any]
    events: tuple[Event, ...] = ()


def set_condition(
    conditions: tuple[Condition, ...], type_: str, status: ConditionStatus, reason: str, message: str, when: str
) -> tuple[Condition, ...]:
    """Replace (or add) one condition; ``lastTransitionTime`` moves only when the status changes."""
    old = next((c for c in conditions if c.type == type_), None)
    moved = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when if moved or old is None else old.last_transition_time,
    )
    kept = tuple(c for c in conditions if c.type != type_)
    return (*kept, new) if old is None else tuple(new if c.type == type_ else c for c in conditions)


def _diff(current: DataRunStatus, new: DataRunStatus) -> dict[str, Any]:
    before, after = dump(current), dump(new)
    return {k: v for k, v in after.items() if before.get(k) != v}


status_diff = _diff  # the merge patch from one status to the next, for the sibling decision modules


# -- validation ---------------------------------------------------------------------------------


def failed_status(current: DataRunStatus, reason: str, err: SpecError | str, when: str) -> StatusUpdate:
    """A run that cannot start: phase Failed, the field named in the message, a Warning Event."""
    message = str(err)
    new = replace(
        current,
        phase=Phase.FAILED,
        reason=reason,
        message=message,
        completion_time=current.completion_time or when,
        conditions=set_condition(current.conditions, APP_COMPLETED, ConditionStatus.FALSE, reason, message, when),
    )
    return StatusUpdate(_diff(current, new), (Event("Warning", reason, message),))


# -- pinning ------------------------------------------------------------------------------------


class PinError(Exception):
    """An input could not be pinned; ``permanent`` if retrying cannot help (unknown label or repo)."""

    def __init__(self, field_path: str, message: str, *, permanent: bool) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message
        self.permanent = permanent

    def as_spec_error(self) -> SpecError:
        return SpecError(self.field_path, self.message)


Resolver = Callable[[str, str | None, str | None], str]
"""(repo, bundle, label) -> bundle id, e.g. ``lambda r, b, l: client.resolve(r, b, l).id``."""


def needs_pinning(spec: DataRunSpec, pinned: Mapping[str, str]) -> bool:
    names = [i.name for i in spec.inputs] + [d.name for d in spec.databases if d.source_repo]
    return any(name not in pinned for name in names)


def pin_inputs(spec: DataRunSpec, resolve: Resolver, pinned: Mapping[str, str] | None = None) -> dict[str, str]:
    """Bundle id of every input and database source. Already pinned names are kept: a restarted
    operator never re-pins a run to a bundle that a label moved to meanwhile."""
    out = dict(pinned or {})
    targets: list[tuple[str, str, str, str | None, str | None]] = [
        (f"spec.inputs[{i}]", x.name, x.repo, x.bundle, x.label) for i, x in enumerate(spec.inputs)
    ]
    targets += [
        (f"spec.databases[{i}]", d.name, d.source_repo, d.source_bundle, d.source_label)
        for i, d in enumerate(spec.databases)
        if d.source_repo
    ]
    for where, name, repo, bundle, label in targets:
        if name in out:
            continue
        field = f"{where}.{'label' if label else 'bundle'}"
        if where.startswith("spec.databases"):
            field = f"{where}.{'sourceLabel' if label else 'sourceBundle'}"
        try:
            out[name] = resolve(repo, bundle, label)
        except (NotFoundError, UsageError) as err:
            raise PinError(field, str(err), permanent=True) from None
        except DatarunError as err:
            raise PinError(field, f"the store did not answer: {err}", permanent=False) from None
    return out


def started_status(
    current: DataRunStatus,
    run: DataRun,
    pinned: Mapping[str, str],
    when: str,
    run_record: str | None = None,
    cache_key: str | None = None,
) -> StatusUpdate:
    """Written BEFORE the pod is created: the pins (and the run record's id) are on record whatever
    happens next."""
    pins = ", ".join(f"{name}={bundle}" for name, bundle in sorted(pinned.items())) or "no inputs"
    new = replace(
        current,
        phase=current.phase or Phase.PENDING,
        reason=current.reason or "PodCreating",
        message=current.message or "creating the pod",
        pinned_inputs=dict(pinned),
        pod_name=pod_name(run.name),
        observed_generation=run.generation,
        run_record=current.run_record or run_record,
        cache_key=current.cache_key or cache_key,
        conditions=set_condition(current.conditions, INPUTS_PINNED, ConditionStatus.TRUE, "Pinned", pins, when),
    )
    events = (Event("Normal", INPUTS_PINNED, pins),) if not current.pinned_inputs and pinned else ()
    return StatusUpdate(_diff(current, new), events)


def cache_hit_status(
    current: DataRunStatus, run: DataRun, pinned: Mapping[str, str], when: str, record: str | None, hit: Run, key: str
) -> StatusUpdate:
    """A cache hit, with no pod: Succeeded/CacheHit, the earlier run's bundles as the outputs,
    labels as the spec moves them."""
    earlier = {o.name: o for o in hit.outputs}
    outputs = tuple(
        OutputStatus(name=o.name, repo=o.repo, bundle=earlier[o.name].bundle, label=o.label or "")
        for o in run.spec.outputs
    )
    message = f"reused the outputs of run {hit.id} (no pod)"
    pins = ", ".join(f"{name}={bundle}" for name, bundle in sorted(pinned.items())) or "no inputs"
    conditions = set_condition(current.conditions, INPUTS_PINNED, ConditionStatus.TRUE, "Pinned", pins, when)
    conditions = set_condition(conditions, OUTPUTS_UPLOADED, ConditionStatus.TRUE, CACHE_HIT, message, when)
    new = replace(
        current,
        phase=Phase.SUCCEEDED,
        reason=CACHE_HIT,
        message=message,
        pinned_inputs=dict(pinned),
        outputs=outputs,
        output_summary=output_summary(outputs),
        app_exit_code=0,
        start_time=current.start_time or when,
        completion_time=when,
        observed_generation=run.generation,
        run_record=current.run_record or record,
        cache_key=key,
        cached_from=hit.id,
        conditions=conditions,
    )
    return StatusUpdate(_diff(current, new), (Event("Normal", CACHE_HIT, message),))


def owned_by(pod: Mapping[str, Any], uid: str) -> bool:
    """Whether an existing pod (409 on create) belongs to this DataRun and can be adopted."""
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


# -- following the pod --------------------------------------------------------------------------


def output_summary(outputs: tuple[OutputStatus, ...]) -> str:
    """One line for ``kubectl get``: ``name=bundle`` of each uploaded output."""
    return ", ".join(f"{o.name}={o.bundle}" for o in outputs if o.bundle)


def _conditions(current: DataRunStatus, result: RunResult, when: str) -> tuple[Condition, ...]:
    conditions = current.conditions
    if result.phase in (Phase.UPLOADING, Phase.SUCCEEDED, Phase.FAILED):
        code = result.app_exit_code
        if code == 0:
            conditions = set_condition(conditions, APP_COMPLETED, ConditionStatus.TRUE, "ExitCode0", "", when)
        elif code is not None:
            conditions = set_condition(
                conditions, APP_COMPLETED, ConditionStatus.FALSE, "AppFailed", f"exit code {code}", when
            )
        elif result.phase is Phase.FAILED:
            conditions = set_condition(
                conditions, APP_COMPLETED, ConditionStatus.FALSE, result.reason, result.message, when
            )
    if result.phase is Phase.SUCCEEDED:
        n = sum(1 for o in result.outputs if o.bundle)
        conditions = set_condition(
            conditions, OUTPUTS_UPLOADED, ConditionStatus.TRUE, "Uploaded", f"{n} outputs uploaded", when
        )
    elif result.phase is Phase.FAILED:
        conditions = set_condition(
            conditions, OUTPUTS_UPLOADED, ConditionStatus.FALSE, result.reason, result.message, when
        )
    return conditions


def _events(current: DataRunStatus, result: RunResult) -> tuple[Event, ...]:
    if result.phase == current.phase:
        if result.phase is Phase.PENDING and result.reason != current.reason and result.reason in STUCK_REASONS:
            return (Event("Warning", result.reason, result.message),)
        return ()
    if result.phase is Phase.PENDING:
        if result.reason in STUCK_REASONS:
            return (Event("Warning", result.reason, result.message),)
        return ()
    if result.phase is Phase.RUNNING:
        return (Event("Normal", "Started", result.message),)
    if result.phase is Phase.UPLOADING:
        return (Event("Normal", "Uploading", result.message),)
    if result.phase is Phase.SUCCEEDED:
        summary = output_summary(result.outputs)
        return (Event("Normal", "Succeeded", f"{result.message}" + (f": {summary}" if summary else "")),)
    return (Event("Warning", result.reason, result.message),)


def status_from_pod(current: DataRunStatus, pod: Mapping[str, Any] | None, when: str) -> StatusUpdate:
    """The status (and Events) a pod's state calls for. A finished run is never changed again, and
    a phase never moves back, so late or replayed pod events (an operator restart) are harmless."""
    if current.phase is not None and current.phase.terminal:
        return StatusUpdate({})
    if pod is None:
        pod_ref = f"the pod `{current.pod_name}`" if current.pod_name else "the pod"
        message = f"{pod_ref} was deleted before the run ended"
        return failed_status(current, "PodDeleted", message, when)
    result = parse_pod_result(pod)
    if current.phase is not None and result.phase.rank < current.phase.rank:
        return StatusUpdate({})
    new = replace(
        current,
        phase=result.phase,
        reason=result.reason,
        message=result.message,
        outputs=result.outputs or current.outputs,
        output_summary=output_summary(result.outputs) or current.output_summary,
        app_exit_code=result.app_exit_code if result.app_exit_code is not None else current.app_exit_code,
        start_time=current.start_time or result.start_time,
        completion_time=result.completion_time or (when if result.phase.terminal else None),
        conditions=_conditions(current, result, when),
    )
    return StatusUpdate(_diff(current, new), _events(current, result))


# -- spec changes and admission -----------------------------------------------------------------


def spec_change_event(old_spec: object, new_spec: object, status: DataRunStatus) -> Event | None:
    """A spec change after the run started is refused: the run keeps its pinned spec."""
    if status.phase is None or old_spec == new_spec:
        return None
    return Event(
        "Warning",
        "SpecChangeRefused",
        "the spec cannot change once the run has started; the run keeps the spec it started with. "
        "To run the new spec, create a new DataRun (or delete and re-create this one).",
    )


RepoExists = Callable[[str], bool | None]
"""repo -> exists? (None: the store could not say)."""


def check_repos(spec: DataRunSpec, exists: RepoExists) -> None:
    """Refuse repos the store says do not exist; an unreachable store refuses nothing."""
    refs = [(f"spec.inputs[{i}].repo", x.repo) for i, x in enumerate(spec.inputs)]
    refs += [(f"spec.outputs[{i}].repo", x.repo) for i, x in enumerate(spec.outputs)]
    refs += [(f"spec.databases[{i}].sourceRepo", d.source_repo) for i, d in enumerate(spec.databases) if d.source_repo]
    refs += [(f"spec.databases[{i}].outputRepo", d.output_repo) for i, d in enumerate(spec.databases) if d.output_repo]
    answers: dict[str, bool | None] = {}
    for where, repo in refs:
        if repo not in answers:
            answers[repo] = exists(repo)
        if answers[repo] is False:
            raise SpecError(where, f"repo `{repo}` does not exist in the store; create it with `datarun repo create`")


def admission_check(
    operation: str | None,
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    repo_exists: RepoExists | None = None,
) -> DataRun | None:
    """What the validating webhook decides; raises SpecError naming the field.

    CREATE checks the whole resource as the operator would. An UPDATE that leaves the spec alone
    passes (kopf's own finalizer and annotation patches must never be refused); one that changes
    the spec is refused once the run has started, and checked like a CREATE before that.
    """
    if operation not in ("CREATE", "UPDATE"):
        return None
    if operation == "UPDATE" and old is not None:
        if old.get("spec") == body.get("spec"):
            return None
        if (old.get("status") or {}).get("phase"):
            raise SpecError("spec", "cannot change once the run has started; create a new DataRun instead")
    run = DataRun.from_body(body)
    if repo_exists is not None:
        check_repos(run.spec, repo_exists)
    return run
