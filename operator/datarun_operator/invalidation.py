"""The operator's lineage decisions, as pure functions: which pinned input is invalid at pin time,
what a finished run's ``Invalidated`` condition says, and whether ``spec.onInputInvalidated: rerun``
asks for a rerun. The kopf side is :mod:`datarun_operator.lineage_handlers`; how a rerun's body is
built is :mod:`datarun_operator.rerun`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from datarun_operator.models import ConditionStatus, DataRun, DataRunSpec, DataRunStatus, OnInputInvalidated, SpecError
from datarun_operator.reconcile import Event, StatusUpdate, set_condition, status_diff

INVALIDATED = "Invalidated"

Reasons = Mapping[str, tuple[str, ...]]
"""Lineage node key (``bundle/<repo>/<id>``, ``run/<id>``) -> reasons of the active invalidations
that reached it (``Graph.invalid_reasons``); a valid node is absent."""


def input_keys(spec: DataRunSpec, pinned: Mapping[str, str]) -> dict[str, str]:
    """Lineage key of every pinned input and database source -> the field that names it."""
    out = {
        f"bundle/{x.repo}/{pinned[x.name]}": f"spec.inputs[{i}]" for i, x in enumerate(spec.inputs) if x.name in pinned
    }
    for i, d in enumerate(spec.databases):
        if d.source_repo and d.name in pinned:
            out.setdefault(f"bundle/{d.source_repo}/{pinned[d.name]}", f"spec.databases[{i}]")
    return out


def invalid_input(spec: DataRunSpec, pinned: Mapping[str, str], reasons: Reasons) -> SpecError | None:
    """The first pinned input that was invalidated and does not allow it, as the error the run
    fails with (reason InputInvalid); None if every input may be used."""
    allowed = {x.name for x in spec.inputs if x.allow_invalid}
    targets = [(f"spec.inputs[{i}]", x.name, x.repo) for i, x in enumerate(spec.inputs)]
    targets += [(f"spec.databases[{i}]", d.name, d.source_repo) for i, d in enumerate(spec.databases) if d.source_repo]
    for where, name, repo in targets:
        bundle = pinned.get(name)
        why = reasons.get(f"bundle/{repo}/{bundle}", ()) if bundle else ()
        if not why or name in allowed:
            continue
        fix = (
            f"set {where}.allowInvalid: true to run on it anyway"
            if where.startswith("spec.inputs")
            else ("a database source cannot be used invalid")
        )
        return SpecError(
            where,
            f"bundle {bundle} of repo `{repo}` is invalid: {'; '.join(why)}. Revalidate its origin "
            f"(`datarun revalidate`), move the label to a valid bundle, or {fix}",
        )
    return None


def run_keys(run: DataRun) -> dict[str, str]:
    """Lineage key -> what it is to this run: its inputs, its outputs and its run record."""
    out = {key: f"input `{field}`" for key, field in input_keys(run.spec, run.status.pinned_inputs).items()}
    for o in run.status.outputs:
        if o.bundle:
            out[f"bundle/{o.repo}/{o.bundle}"] = f"output `{o.name}`"
    if run.status.run_record:
        out[f"run/{run.status.run_record}"] = "the run record"
    return out


def invalidated_status(current: DataRunStatus, keys: Mapping[str, str], reasons: Reasons, when: str) -> StatusUpdate:
    """The ``Invalidated`` condition of a finished run: True (with a Warning Event) when an input,
    output or its run record was invalidated; back to False (with a Normal Event) when that was
    undone. Unchanged reasons change nothing, so a poller can call this every time."""
    hit = sorted((what, key, why) for key, what in keys.items() for why in reasons.get(key, ()))
    old = next((c for c in current.conditions if c.type == INVALIDATED), None)
    if not hit:
        if old is None or old.status is not ConditionStatus.TRUE:
            return StatusUpdate({})
        message = "no input or output is invalid any more"
        conditions = set_condition(current.conditions, INVALIDATED, ConditionStatus.FALSE, "Revalidated", message, when)
        event = Event("Normal", "Revalidated", message)
    else:
        parts = [f"{what} {key.split('/')[-1]}: {why}" for what, key, why in hit]
        message = "; ".join(parts)
        inputs = any(what.startswith("input") for what, _, _ in hit)
        reason = "InputInvalidated" if inputs else "OutputInvalidated"
        if old is not None and old.status is ConditionStatus.TRUE and old.message == message:
            return StatusUpdate({})
        conditions = set_condition(current.conditions, INVALIDATED, ConditionStatus.TRUE, reason, message, when)
        event = Event("Warning", INVALIDATED, message)
    new = replace(current, conditions=conditions)
    return StatusUpdate(status_diff(current, new), (event,))


def wants_rerun(run: DataRun, reasons: Reasons) -> bool:
    """``spec.onInputInvalidated: rerun`` and a pinned input of the finished run is invalid."""
    if run.spec.on_input_invalidated is not OnInputInvalidated.RERUN:
        return False
    if run.status.phase is None or not run.status.phase.terminal:
        return False
    return any(reasons.get(key) for key in input_keys(run.spec, run.status.pinned_inputs))
