"""The handlers' pure decisions: pinning, status from pods, events, spec changes, admission."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from datarun.errors import NotFoundError, StoreError
from datarun_operator import invalidation, reconcile, rerun
from datarun_operator.builder import FUSE, MAIN, get_pod
from datarun_operator.models import (
    Condition,
    ConditionStatus,
    DataRunStatus,
    Phase,
    SpecError,
    parse_spec,
    parse_status,
)
from datarun_operator.runrecord import LABEL_RERUN_OF
from datarun_operator.settings import Settings
from tests.operator.builders import (
    BUNDLE_A,
    BUNDLE_B,
    BUNDLE_DB,
    BUNDLE_OUT,
    body,
    fuse_result,
    run,
    spec,
    terminated,
    with_status,
)

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def apply(status: DataRunStatus, update: reconcile.StatusUpdate) -> DataRunStatus:
    """What the apiserver does with the merge patch."""
    from datarun_operator.schema import dump

    return parse_status({**dump(status), **update.patch})


# -- pinning -------------------------------------------------------------------------------------


def test_labels_are_pinned_and_bundles_checked() -> None:
    calls: list[tuple[str, str | None, str | None]] = []

    def resolve(repo: str, bundle: str | None, label: str | None) -> str:
        calls.append((repo, bundle, label))
        return bundle or {"v1": BUNDLE_A, "latest": BUNDLE_DB}[label or ""]

    raw = spec(
        inputs=[
            {"name": "numbers", "repo": "in", "label": "v1", "path": "a"},
            {"name": "words", "repo": "in", "bundle": BUNDLE_B, "path": "b"},
        ],
        databases=[
            {"name": "db", "port": 5432, "sourceRepo": "dbs", "sourceLabel": "latest"},
            {"name": "e", "port": 1},
        ],
    )
    pinned = reconcile.pin_inputs(parse_spec(raw), resolve)
    assert pinned == {"numbers": BUNDLE_A, "words": BUNDLE_B, "db": BUNDLE_DB}
    assert calls == [("in", None, "v1"), ("in", BUNDLE_B, None), ("dbs", None, "latest")]


def test_already_pinned_inputs_are_never_re_resolved() -> None:
    def resolve(repo: str, bundle: str | None, label: str | None) -> str:
        raise AssertionError("a restarted operator must not re-pin")

    assert reconcile.pin_inputs(parse_spec(spec()), resolve, {"numbers": BUNDLE_A}) == {"numbers": BUNDLE_A}
    assert not reconcile.needs_pinning(parse_spec(spec()), {"numbers": BUNDLE_A})
    assert reconcile.needs_pinning(parse_spec(spec()), {})


def test_an_unknown_label_is_a_permanent_error_naming_the_field() -> None:
    def resolve(repo: str, bundle: str | None, label: str | None) -> str:
        raise NotFoundError("label `v1` not found in repo `in`")

    with pytest.raises(reconcile.PinError) as caught:
        reconcile.pin_inputs(parse_spec(spec()), resolve)
    assert caught.value.permanent
    assert caught.value.field_path == "spec.inputs[0].label"
    assert caught.value.as_spec_error().field_path == "spec.inputs[0].label"


def test_an_unreachable_store_is_temporary() -> None:
    def resolve(repo: str, bundle: str | None, label: str | None) -> str:
        raise StoreError("connection refused")

    raw = spec(inputs=[], databases=[{"name": "db", "port": 1, "sourceRepo": "d", "sourceBundle": BUNDLE_A}])
    with pytest.raises(reconcile.PinError) as caught:
        reconcile.pin_inputs(parse_spec(raw), resolve)
    assert not caught.value.permanent
    assert caught.value.field_path == "spec.databases[0].sourceBundle"


def test_started_status_records_the_pins_before_the_pod() -> None:
    update = reconcile.started_status(DataRunStatus(), run(), {"numbers": BUNDLE_A}, T0)
    assert update.patch["pinnedInputs"] == {"numbers": BUNDLE_A}
    assert update.patch["phase"] == "Pending"
    assert update.patch["podName"] == "job-run"
    assert update.patch["observedGeneration"] == 1
    assert update.patch["conditions"] == [
        {
            "type": "InputsPinned",
            "status": "True",
            "reason": "Pinned",
            "message": f"numbers={BUNDLE_A}",
            "lastTransitionTime": T0,
        }
    ]
    assert update.events == (reconcile.Event("Normal", "InputsPinned", f"numbers={BUNDLE_A}"),)
    again = reconcile.started_status(apply(DataRunStatus(), update), run(), {"numbers": BUNDLE_A}, T1)
    assert again == reconcile.StatusUpdate({}), "a retried create changes nothing"


def test_invalid_spec_fails_the_run_with_the_field_named() -> None:
    err = SpecError("spec.inputs[1].label", "give exactly one of `label` or `bundle`")
    update = reconcile.failed_status(DataRunStatus(), "InvalidSpec", err, T0)
    assert update.patch["phase"] == "Failed"
    assert update.patch["reason"] == "InvalidSpec"
    assert update.patch["message"] == "spec.inputs[1].label: give exactly one of `label` or `bundle`"
    assert update.patch["completionTime"] == T0
    assert update.events == (reconcile.Event("Warning", "InvalidSpec", str(err)),)


def test_a_pod_is_adopted_only_from_its_own_datarun(settings: Settings) -> None:
    pod = get_pod(run(), {"numbers": BUNDLE_A}, settings)
    assert reconcile.owned_by(pod, run().uid)
    assert not reconcile.owned_by(pod, "another-uid")
    assert not reconcile.owned_by({"metadata": {}}, run().uid)


# -- status from the pod ----------------------------------------------------------------------


@pytest.fixture
def pod(settings: Settings) -> dict[str, Any]:
    return get_pod(run(), {"numbers": BUNDLE_A}, settings)


@pytest.fixture
def pending() -> DataRunStatus:
    return apply(DataRunStatus(), reconcile.started_status(DataRunStatus(), run(), {"numbers": BUNDLE_A}, T0))


def test_a_run_goes_through_its_phases_with_events(pod: dict[str, Any], pending: DataRunStatus) -> None:
    status = pending
    running = with_status(pod, "Running", {MAIN: {"running": {}}, FUSE: {"running": {}}})
    update = reconcile.status_from_pod(status, running, T1)
    assert update.patch["phase"] == "Running"
    assert update.patch["startTime"] == "2026-01-01T00:00:00Z"
    assert update.events == (reconcile.Event("Normal", "Started", "the app is running"),)
    status = apply(status, update)
    assert reconcile.status_from_pod(status, running, T1) == reconcile.StatusUpdate({}), "replayed event: no-op"

    uploading = with_status(pod, "Running", {MAIN: terminated(0), FUSE: {"running": {}}})
    update = reconcile.status_from_pod(status, uploading, T1)
    assert update.patch["phase"] == "Uploading"
    assert [e.reason for e in update.events] == ["Uploading"]
    status = apply(status, update)

    message = fuse_result(
        [
            {
                "name": "latest",
                "repo": "out",
                "path": "/data/out/result",
                "label": "latest",
                "bundle": BUNDLE_OUT,
                "uploaded": True,
            }
        ]
    )
    done = with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, message)})
    update = reconcile.status_from_pod(status, done, T2)
    assert update.patch["phase"] == "Succeeded"
    assert update.patch["outputs"] == [
        {"name": "result", "repo": "out", "bundle": BUNDLE_OUT, "label": "latest", "error": ""}
    ]
    assert update.patch["outputSummary"] == f"result={BUNDLE_OUT}"
    assert "appExitCode" not in update.patch, "known since Uploading: a patch carries only changes"
    assert update.patch["completionTime"] == "2026-01-01T00:05:00Z"
    assert update.events == (
        reconcile.Event("Normal", "Succeeded", f"the app succeeded; 1 of 1 outputs uploaded: result={BUNDLE_OUT}"),
    )
    status = apply(status, update)
    assert status.app_exit_code == 0
    types = {c.type: c for c in status.conditions}
    assert types["InputsPinned"].last_transition_time == T0
    assert (types["AppCompleted"].status, types["OutputsUploaded"].status) == (
        ConditionStatus.TRUE,
        ConditionStatus.TRUE,
    )
    assert status.pinned_inputs == {"numbers": BUNDLE_A}, "pins survive every update"


def test_a_finished_run_is_never_changed(pod: dict[str, Any], pending: DataRunStatus) -> None:
    done = replace(pending, phase=Phase.SUCCEEDED)
    running = with_status(pod, "Running", {MAIN: {"running": {}}})
    assert reconcile.status_from_pod(done, running, T1) == reconcile.StatusUpdate({})
    assert reconcile.status_from_pod(done, None, T1) == reconcile.StatusUpdate({})


def test_phases_never_move_back(pod: dict[str, Any], pending: DataRunStatus) -> None:
    uploading = replace(pending, phase=Phase.UPLOADING)
    stale = with_status(pod, "Running", {MAIN: {"running": {}}})
    assert reconcile.status_from_pod(uploading, stale, T1) == reconcile.StatusUpdate({})


def test_an_app_failure_is_failed_with_the_reason(pod: dict[str, Any], pending: DataRunStatus) -> None:
    failed = with_status(
        pod, "Failed", {MAIN: terminated(2, "bad input"), FUSE: terminated(0, fuse_result([], app_code=2))}
    )
    update = reconcile.status_from_pod(pending, failed, T1)
    assert (update.patch["phase"], update.patch["reason"]) == ("Failed", "AppFailed")
    assert update.patch["message"] == "the app exited with code 2: bad input"
    assert update.events == (reconcile.Event("Warning", "AppFailed", "the app exited with code 2: bad input"),)
    conditions = {c.type: c for c in apply(pending, update).conditions}
    assert (conditions["AppCompleted"].status, conditions["AppCompleted"].message) == (
        ConditionStatus.FALSE,
        "exit code 2",
    )


def test_a_deleted_pod_fails_the_run(pending: DataRunStatus) -> None:
    update = reconcile.status_from_pod(pending, None, T1)
    assert (update.patch["phase"], update.patch["reason"]) == ("Failed", "PodDeleted")
    assert "`job-run`" in update.patch["message"]


def test_a_stuck_pod_warns_once(pod: dict[str, Any], pending: DataRunStatus) -> None:
    stuck = with_status(pod, "Pending", {MAIN: {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}})
    update = reconcile.status_from_pod(pending, stuck, T1)
    assert [e.reason for e in update.events] == ["ImagePullBackOff"]
    assert update.patch["reason"] == "ImagePullBackOff"
    assert reconcile.status_from_pod(apply(pending, update), stuck, T2).events == ()


def test_conditions_keep_their_transition_time() -> None:
    first = reconcile.set_condition((), "A", ConditionStatus.TRUE, "R", "m", T0)
    same = reconcile.set_condition(first, "A", ConditionStatus.TRUE, "R2", "m2", T1)
    flipped = reconcile.set_condition(same, "A", ConditionStatus.FALSE, "R3", "m3", T2)
    assert same == (
        Condition(type="A", status=ConditionStatus.TRUE, reason="R2", message="m2", last_transition_time=T0),
    )
    assert flipped[0].last_transition_time == T2


# -- spec changes and admission ---------------------------------------------------------------


def test_spec_changes_after_the_start_are_refused_with_an_event(pending: DataRunStatus) -> None:
    old, new = spec(), spec(image="busybox:1.37")
    event = reconcile.spec_change_event(old, new, pending)
    assert event is not None and event.type == "Warning" and event.reason == "SpecChangeRefused"
    assert "keeps the spec it started with" in event.message
    assert reconcile.spec_change_event(old, new, DataRunStatus()) is None, "not started: nothing to refuse"
    assert reconcile.spec_change_event(old, old, pending) is None


def test_admission_refuses_bad_specs_with_the_field() -> None:
    bad = body(spec(outputs=[{"name": "o", "repo": "out", "path": "in/numbers/x"}]))
    with pytest.raises(SpecError) as caught:
        reconcile.admission_check("CREATE", bad, None)
    assert caught.value.field_path == "spec.outputs[0].path"
    assert reconcile.admission_check("CREATE", body(), None) is not None
    assert reconcile.admission_check("DELETE", bad, None) is None


def test_admission_refuses_spec_changes_after_the_start_but_lets_metadata_through() -> None:
    started = body(status={"phase": "Running"})
    changed = body(spec(image="other:1"))
    with pytest.raises(SpecError) as caught:
        reconcile.admission_check("UPDATE", changed, started)
    assert caught.value.field_path == "spec"
    annotated = {**started, "metadata": {**started["metadata"], "finalizers": ["datarun.io/finalizer"]}}
    assert reconcile.admission_check("UPDATE", annotated, started) is None, "kopf's own patches must pass"
    assert reconcile.admission_check("UPDATE", changed, body()) is not None, "before the start, a change is checked"


def test_admission_checks_repos_when_the_store_can_say() -> None:
    def exists(repo: str) -> bool | None:
        return {"in": True, "out": False}.get(repo)

    with pytest.raises(SpecError) as caught:
        reconcile.admission_check("CREATE", body(), None, exists)
    assert caught.value.field_path == "spec.outputs[0].repo"
    assert "`out` does not exist" in caught.value.message
    assert reconcile.admission_check("CREATE", body(), None, lambda repo: None) is not None, "unreachable: allowed"


def test_output_summary_lists_only_uploaded_outputs() -> None:
    from datarun_operator.models import OutputStatus

    outputs = (OutputStatus(name="a", repo="r", bundle=BUNDLE_A), OutputStatus(name="b", repo="r", error="x"))
    assert reconcile.output_summary(outputs) == f"a={BUNDLE_A}"


# -- lineage ------------------------------------------------------------------------------------


def test_invalid_input_names_the_field_and_respects_allow_invalid() -> None:
    from datarun_operator.models import parse_spec

    raw = spec(
        inputs=[
            {"name": "a", "repo": "in", "label": "v1", "path": "in/a", "allowInvalid": True},
            {"name": "b", "repo": "in", "label": "v1", "path": "in/b"},
        ]
    )
    parsed = parse_spec(raw)
    pinned = {"a": "A" * 27, "b": "B" * 27}
    assert invalidation.invalid_input(parsed, pinned, {}) is None
    only_a = {f"bundle/in/{'A' * 27}": ("bad (origin x, qa, t)",)}
    assert invalidation.invalid_input(parsed, pinned, only_a) is None, "a allows it"
    err = invalidation.invalid_input(parsed, pinned, {f"bundle/in/{'B' * 27}": ("bad (origin x, qa, t)",)})
    assert err is not None and err.field_path == "spec.inputs[1]" and "spec.inputs[1].allowInvalid" in str(err)


def test_invalidated_status_says_output_when_only_an_output_was_hit() -> None:
    keys = {"bundle/out/O": "output `result`", "bundle/in/I": "input `spec.inputs[0]`"}
    update = invalidation.invalidated_status(DataRunStatus(), keys, {"bundle/out/O": ("broken",)}, "t")
    (cond,) = update.patch["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Invalidated", "True", "OutputInvalidated")
    assert [e.reason for e in update.events] == ["Invalidated"]
    assert invalidation.invalidated_status(DataRunStatus(), keys, {}, "t").patch == {}, "never invalid: nothing"


def test_rerun_body_fits_the_name_limit_and_drops_an_older_rerun_label() -> None:
    raw = body(name="x" * 63)
    raw["metadata"]["labels"] = {"team": "a", LABEL_RERUN_OF: "older"}
    made = rerun.rerun_body(raw, 63)
    assert len(made["metadata"]["generateName"]) + 5 <= 63
    assert made["metadata"]["labels"] == {"team": "a", LABEL_RERUN_OF: raw["metadata"]["uid"]}
    assert "status" not in made and made["spec"] == raw["spec"] and "name" not in made["metadata"]
