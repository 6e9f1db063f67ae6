"""The `rerun` invalidation action against a real kube-apiserver (the chart's CRD and RBAC, the operator as
the chart's ServiceAccount, kwok ending the pods): a finished DataRun wrote a bundle of a repo with a
`rerun` action; an input of it is invalidated by `datarun.lineage` with the actions run (as the CLI on
another host would), which leaves the rerun pending for the operator; the operator re-creates the DataRun
from the run record's recorded spec, once (a restart included), and the new run pins afresh and succeeds.
The same when the original DataRun object was deleted before the invalidation: the record is enough."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from datarun.catalog import open_index
from datarun.lineage import Graph, bundle_node, invalidate
from datarun.lineage.actions import add_action, reruns
from datarun.repo import Client
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.models import GROUP, PLURAL, VERSION
from datarun_operator.rerun import ANNOTATION_RERUN_OF
from datarun_operator.runrecord import ANNOTATION_RERUN_OF_RUN, LABEL_RERUN_OF, LABEL_RERUN_OF_RUN
from tests.cluster.operator_harness import OperatorProcess
from tests.cluster.test_operator import (
    RUNS_NAMESPACE,
    chart,
    create_run,
    custom,
    finish,
    get_run,
    wait_for,
    wait_for_phase,
    wait_for_pod,
)
from tests.cluster.test_operator_lineage import _upload, operator, store
from tests.operator.builders import fuse_result, spec

pytestmark = pytest.mark.cluster
__all__ = ["chart", "create_run", "custom", "operator", "store"]  # fixtures, registered by import

Store = tuple[str, Client, Path]


@pytest.fixture(scope="module")
def rerun_action(store: Store) -> dict[str, Any]:
    return add_action(store[1], on="repo=out", do="rerun")


def _run_to_success(
    name: str, store: Store, core_v1: kubernetes.client.CoreV1Api, custom: Any, operator: OperatorProcess
) -> dict[str, Any]:
    """End the DataRun's pod as its sidecars would, having uploaded a real bundle of `out`."""
    _url, client, writer = store
    wait_for_pod(core_v1, name, operator, phase="Running")
    folder = writer / f"result-{name}"
    folder.mkdir()
    (folder / "sum.txt").write_text(name)
    made = client.upload("out", str(folder), f"result of {name}").bundle.id
    out = [{"name": "result", "repo": "out", "path": "/data/out/result", "bundle": made, "uploaded": True}]
    finish(core_v1, name, {MAIN: 0, FUSE: 0}, {FUSE: fuse_result(out)})
    done = wait_for_phase(custom, name, "Succeeded", operator)
    assert done["status"]["outputs"][0]["bundle"] == made
    return done


def _invalidate_with_actions(store: Store, bundle: str, reason: str) -> None:
    _url, client, writer = store
    with open_index(f"sqlite://{writer / 'index.sqlite'}", writer) as index:
        graph = Graph(index)
        graph.sync(client.meta)
        invalidate(client.meta, graph, bundle_node("in", bundle), reason=reason, who="qa", client=client)


def _reruns_of(custom: Any, run_id: str) -> list[dict[str, Any]]:
    found = custom.list_namespaced_custom_object(
        GROUP, VERSION, RUNS_NAMESPACE, PLURAL, label_selector=f"{LABEL_RERUN_OF_RUN}={run_id}"
    )
    return list(found["items"])


def _wait_for_rerun(custom: Any, run_id: str, operator: OperatorProcess) -> dict[str, Any]:
    made = wait_for("the rerun DataRun", lambda: _reruns_of(custom, run_id) or None, operator=operator)
    assert len(made) == 1, [r["metadata"]["name"] for r in made]
    return dict(made[0])


def _check_the_rerun(
    new: dict[str, Any], old_name: str, old_spec: dict[str, Any], old_uid: str, run_id: str, store: Store
) -> None:
    meta = new["metadata"]
    assert meta["name"].startswith(f"{old_name}-rerun-")
    assert meta["labels"][LABEL_RERUN_OF] == old_uid and meta["labels"][LABEL_RERUN_OF_RUN] == run_id
    assert meta["annotations"][ANNOTATION_RERUN_OF] == old_name
    assert meta["annotations"][ANNOTATION_RERUN_OF_RUN] == run_id
    recorded = store[1].runs.get(run_id).resource
    assert recorded is not None and new["spec"] == recorded["spec"] == old_spec, "built from the recorded spec"


def _finish_the_rerun(
    new: dict[str, Any],
    good: str,
    run_id: str,
    store: Store,
    core_v1: kubernetes.client.CoreV1Api,
    custom: Any,
    operator: OperatorProcess,
) -> None:
    name = new["metadata"]["name"]
    done = _run_to_success(name, store, core_v1, custom, operator)
    assert done["status"]["pinnedInputs"] == {"numbers": good}, "the rerun re-pins the label"
    assert store[1].runs.get(done["status"]["runRecord"]).rerun_of == run_id
    (outcome,) = reruns(store[1], {run_id})
    assert (outcome["outcome"], outcome["name"], outcome["new_run"]) == ("created", name, done["status"]["runRecord"])
    # What people see: the real CLI, as another host would run it.
    cli = Path(sys.executable).parent / "datarun"
    env = {**os.environ, "DATARUN_CACHE_DIR": str(store[2] / "cli-cache"), "DATARUN_HOME": str(store[2] / "cli-home")}
    shown = subprocess.run(
        [str(cli), "lineage", "descendants", "--run", run_id, "--store", store[0]],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert f"RERUN: {run_id} -> {RUNS_NAMESPACE}/{name} , created , run {outcome['new_run']}" in shown, shown


def test_a_rerun_action_recreates_the_finished_run_from_its_record_once_and_it_succeeds(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: Store,
    rerun_action: dict[str, Any],
) -> None:
    _url, client, writer = store
    bad = _upload(client, writer, "11 12 13")
    name = create_run(spec())
    old = _run_to_success(name, store, core_v1, custom, operator)
    run_id = old["status"]["runRecord"]
    good = _upload(client, writer, "14 15 16")
    _invalidate_with_actions(store, bad, "sensor broken")
    new = _wait_for_rerun(custom, run_id, operator)
    try:
        _check_the_rerun(new, name, old["spec"], old["metadata"]["uid"], run_id, store)
        _finish_the_rerun(new, good, run_id, store, core_v1, custom, operator)
        # A restarted operator has no memory of what it settled: the outcome record keeps it at one.
        operator.stop()
        operator.start()
        log = operator.log_path
        wait_for(
            "the restarted operator's lineage timer",
            lambda: True if "Timer 'lineage' succeeded" in log.read_text(errors="replace") else None,
            operator=operator,
        )
        assert len(_reruns_of(custom, run_id)) == 1 and len(reruns(client, {run_id})) == 1
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, new["metadata"]["name"])


def test_the_record_is_enough_when_the_datarun_was_deleted_before_the_invalidation(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: Store,
    rerun_action: dict[str, Any],
) -> None:
    _url, client, writer = store
    bad = _upload(client, writer, "21 22 23")
    name = create_run(spec())
    old = _run_to_success(name, store, core_v1, custom, operator)
    run_id = old["status"]["runRecord"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, name)
    wait_for(f"DataRun {name} to be gone", lambda: True if get_run(custom, name) is None else None, operator=operator)
    good = _upload(client, writer, "24 25 26")
    _invalidate_with_actions(store, bad, "wrong calibration")
    new = _wait_for_rerun(custom, run_id, operator)
    try:
        _check_the_rerun(new, name, old["spec"], old["metadata"]["uid"], run_id, store)
        _finish_the_rerun(new, good, run_id, store, core_v1, custom, operator)
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, new["metadata"]["name"])
