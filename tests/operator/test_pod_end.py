"""The run ends when its containers have, not when the kubelet gets round to the pod's final phase.

On the real node the kubelet reports ``Succeeded`` only after it has torn the pod's sandbox down, seconds after
every container's ``terminated`` state (exit code, termination message) is in the status. These tests pin the
rule that lets the operator finish the run at that earlier moment: the result read from a still ``Running`` pod
whose containers have all ended is exactly the one the final phase would give, and a pod where anything could
still run (a container, an init container such as a native sidecar, a restart policy) is not ended early.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from datarun_operator import reconcile
from datarun_operator.builder import FUSE, INIT, MAIN, get_pod
from datarun_operator.models import DataRunStatus, Phase, parse_status
from datarun_operator.result import parse_pod_result, settled_phase
from datarun_operator.schema import dump
from datarun_operator.settings import Settings
from tests.operator.builders import BUNDLE_A, BUNDLE_OUT, fuse_result, run, spec, terminated, with_status

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
UPLOADED = [
    {
        "name": "latest",
        "repo": "out",
        "path": "/data/out/result",
        "label": "latest",
        "bundle": BUNDLE_OUT,
        "uploaded": True,
    }
]


@pytest.fixture
def pod(settings: Settings) -> dict[str, Any]:
    raw = spec(outputs=[{"name": "result", "repo": "out", "path": "out/result", "label": "latest"}])
    built = get_pod(run(raw), {"numbers": BUNDLE_A}, settings)
    assert [c["name"] for c in built["spec"]["containers"]] == [MAIN, FUSE]
    assert [c["name"] for c in built["spec"]["initContainers"]] == [INIT]
    assert built["spec"]["restartPolicy"] == "Never"
    return built


def kubelet_status(pod: dict[str, Any], phase: str, main: dict[str, Any], fuse: dict[str, Any]) -> dict[str, Any]:
    """The pod as the kubelet reports it: the init container's status too."""
    out = with_status(pod, phase, {MAIN: main, FUSE: fuse})
    out["status"]["initContainerStatuses"] = [{"name": INIT, "state": terminated(0, finished="2026-01-01T00:00:01Z")}]
    return out


def test_a_running_pod_whose_containers_all_ended_is_settled(pod: dict[str, Any]) -> None:
    ok = kubelet_status(pod, "Running", terminated(0), terminated(0, fuse_result(UPLOADED)))
    assert settled_phase(ok) == "Succeeded"
    result = parse_pod_result(ok)
    assert (result.phase, result.reason, result.app_exit_code) == (Phase.SUCCEEDED, "Succeeded", 0)
    assert [(o.name, o.bundle) for o in result.outputs] == [("result", BUNDLE_OUT)]
    assert result.completion_time == "2026-01-01T00:05:00Z", "the containers' end, not when the operator looked"

    failed = kubelet_status(pod, "Running", terminated(3), terminated(0, fuse_result([], app_code=3)))
    assert settled_phase(failed) == "Failed"
    assert (parse_pod_result(failed).phase, parse_pod_result(failed).reason) == (Phase.FAILED, "AppFailed")


def test_anything_that_could_still_run_keeps_the_pod_open(pod: dict[str, Any]) -> None:
    uploading = kubelet_status(pod, "Running", terminated(0), {"running": {}})
    assert settled_phase(uploading) == "Running"
    assert parse_pod_result(uploading).phase is Phase.UPLOADING

    sidecar_first = kubelet_status(pod, "Running", {"running": {}}, terminated(1, fuse_result([], errors=["x"])))
    assert parse_pod_result(sidecar_first).phase is Phase.RUNNING

    native_sidecar = kubelet_status(pod, "Running", terminated(0), terminated(0, fuse_result(UPLOADED)))
    native_sidecar["status"]["initContainerStatuses"] = [{"name": INIT, "state": {"running": {}}}]
    assert settled_phase(native_sidecar) == "Running", "an init container still running (restartPolicy: Always)"

    unreported = kubelet_status(pod, "Running", terminated(0), terminated(0, fuse_result(UPLOADED)))
    del unreported["status"]["initContainerStatuses"]
    assert settled_phase(unreported) == "Running", "a container without a status has not been seen to end"

    restarting = copy.deepcopy(kubelet_status(pod, "Running", terminated(0), terminated(0, fuse_result(UPLOADED))))
    restarting["spec"]["restartPolicy"] = "OnFailure"
    assert settled_phase(restarting) == "Running", "only restartPolicy Never rules out another start"


@pytest.mark.parametrize(
    ("main_code", "fuse_code", "fuse_message"),
    [
        (0, 0, fuse_result(UPLOADED)),
        (3, 0, fuse_result([], app_code=3)),
        (75, 1, fuse_result([{**UPLOADED[0], "bundle": "", "uploaded": False, "error": "store down"}])),
        (76, 1, fuse_result([], app_code=None, errors=["mount: no such bundle"])),
        (77, 0, ""),
        (0, 0, ""),
    ],
)
def test_the_early_result_is_the_one_the_final_phase_gives(
    pod: dict[str, Any], main_code: int, fuse_code: int, fuse_message: str
) -> None:
    main, fuse = terminated(main_code), terminated(fuse_code, fuse_message)
    final = "Succeeded" if main_code == fuse_code == 0 else "Failed"
    early = kubelet_status(pod, "Running", main, fuse)
    assert settled_phase(early) == final
    assert parse_pod_result(early) == parse_pod_result(kubelet_status(pod, final, main, fuse))


def test_the_status_is_final_at_the_first_pod_event_with_every_container_ended(pod: dict[str, Any]) -> None:
    status = parse_status(
        {**dump(DataRunStatus()), **reconcile.started_status(DataRunStatus(), run(), {"numbers": BUNDLE_A}, T0).patch}
    )
    events = [
        kubelet_status(pod, "Running", {"running": {}}, {"running": {}}),
        kubelet_status(pod, "Running", terminated(0), {"running": {}}),
        kubelet_status(pod, "Running", terminated(0), terminated(0, fuse_result(UPLOADED))),
        kubelet_status(pod, "Succeeded", terminated(0), terminated(0, fuse_result(UPLOADED))),
    ]
    phases = []
    for event in events:
        update = reconcile.status_from_pod(status, event, T1)
        status = parse_status({**dump(status), **update.patch})
        phases.append((status.phase, update.patch.get("phase")))
    assert phases == [
        (Phase.RUNNING, "Running"),
        (Phase.UPLOADING, "Uploading"),
        (Phase.SUCCEEDED, "Succeeded"),
        (Phase.SUCCEEDED, None),  # the kubelet's own Succeeded, later, changes nothing
    ]
    assert [(o.name, o.bundle) for o in status.outputs] == [("result", BUNDLE_OUT)]


def test_every_mix_of_ended_and_running_containers(pod: dict[str, Any]) -> None:
    """Settled only when all three (init, main, fuse) have ended, whatever the order."""
    states = {"running": {"running": {}}, "ended": terminated(0, fuse_result(UPLOADED))}
    for init, main, fuse in itertools.product(states, repeat=3):
        shaped = with_status(pod, "Running", {MAIN: states[main], FUSE: states[fuse]})
        shaped["status"]["initContainerStatuses"] = [{"name": INIT, "state": states[init]}]
        expected = "Succeeded" if (init, main, fuse) == ("ended", "ended", "ended") else "Running"
        assert settled_phase(shaped) == expected, (init, main, fuse)
