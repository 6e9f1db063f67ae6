"""Lineage on the operator against a real kube-apiserver (the chart's CRD and RBAC, the operator as the
chart's ServiceAccount, kwok ending the pods): a finished run whose input is invalidated later gets the
Invalidated condition and Event and, with `onInputInvalidated: rerun`, exactly one rerun that re-pins the
label; a run whose pinned input is invalid fails with InputInvalid and makes no pod. The invalidations
are written by `datarun.lineage` with an index of their own, as another host would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from datarun.catalog import open_index
from datarun.lineage import Graph, bundle_node, invalidate
from datarun.repo import Client, connect
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.models import GROUP, PLURAL, VERSION
from datarun_operator.runrecord import LABEL_RERUN_OF
from tests.cluster.controlplane import Cluster
from tests.cluster.operator_harness import OperatorProcess, ensure_namespace, service_account_kubeconfig
from tests.cluster.test_operator import (
    RUNS_NAMESPACE,
    chart,
    create_run,
    custom,
    finish,
    get_run,
    kwok_operator_env,
    pods_of,
    wait_for,
    wait_for_event,
    wait_for_phase,
    wait_for_pod,
)
from tests.operator.builders import fuse_result, spec

pytestmark = pytest.mark.cluster
__all__ = ["chart", "create_run", "custom"]  # fixtures, registered by import


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client, Path]]:
    root = tmp_path_factory.mktemp("lineage-store")
    url = f"file://{root}"
    client = connect(url)
    client.create_repo("in", "inputs")
    client.create_repo("out", "outputs")
    yield url, client, tmp_path_factory.mktemp("writer")
    client.close()


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    chart: list[dict[str, Any]],
    store: tuple[str, Client, Path],
    tmp_path_factory: pytest.TempPathFactory,
    kube_api: kubernetes.client.ApiClient,
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("lineage-operator")
    proc = OperatorProcess(
        service_account_kubeconfig(control_plane, work / "kubeconfig"),
        work,
        env={
            **kwok_operator_env(store[0]),
            "DATARUN_OPERATOR_LINEAGE_SECONDS": "1",
            "DATARUN_CACHE_DIR": str(work / "cache"),
        },
    )
    ensure_namespace(kube_api, RUNS_NAMESPACE)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _upload(client: Client, root: Path, text: str) -> str:
    folder = root / f"data-{text}"
    folder.mkdir()
    (folder / "numbers.txt").write_text(text)
    return client.upload("in", str(folder), text, label="v1").bundle.id


def _invalidate(store: tuple[str, Client, Path], bundle: str, reason: str) -> None:
    _url, client, writer = store
    with open_index(f"sqlite://{writer / 'index.sqlite'}", writer) as index:
        graph = Graph(index)
        graph.sync(client.meta)
        invalidate(client.meta, graph, bundle_node("in", bundle), reason=reason, who="qa")


def test_an_invalidated_input_marks_the_finished_run_and_reruns_it_once(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: tuple[str, Client, Path],
) -> None:
    _url, client, writer = store
    bad = _upload(client, writer, "1 2 3")
    name = create_run(spec(onInputInvalidated="rerun"))
    wait_for_pod(core_v1, name, operator, phase="Running")
    out = [{"name": "result", "repo": "out", "path": "/data/out/result", "label": "latest", "bundle": "B" * 27}]
    finish(core_v1, name, {MAIN: 0, FUSE: 0}, {FUSE: fuse_result(out)})
    old = wait_for_phase(custom, name, "Succeeded", operator)
    assert old["status"]["pinnedInputs"] == {"numbers": bad}

    good = _upload(client, writer, "4 5 6")  # the label moves on, then the old bundle is found bad
    _invalidate(store, bad, "sensor broken")

    def invalidated() -> dict[str, Any] | None:
        run = get_run(custom, name) or {}
        cond = [c for c in (run.get("status") or {}).get("conditions", []) if c["type"] == "Invalidated"]
        return cond[0] if cond and cond[0]["status"] == "True" else None

    cond = wait_for("the Invalidated condition", invalidated, operator=operator)
    assert cond["reason"] == "InputInvalidated" and "sensor broken" in cond["message"]
    wait_for_event(core_v1, name, ("Warning", "Invalidated"), operator)
    wait_for_event(core_v1, name, ("Normal", "Rerun"), operator)

    uid = old["metadata"]["uid"]

    def reruns() -> list[dict[str, Any]]:
        found: Any = custom.list_namespaced_custom_object(
            GROUP, VERSION, RUNS_NAMESPACE, PLURAL, label_selector=f"{LABEL_RERUN_OF}={uid}"
        )
        return list(found["items"])

    (rerun,) = reruns()
    new = rerun["metadata"]["name"]
    try:
        assert new.startswith(f"{name}-rerun-")
        wait_for_pod(core_v1, new, operator)
        pinned = wait_for(
            "the rerun's pins", lambda: (get_run(custom, new) or {}).get("status", {}).get("pinnedInputs")
        )
        assert pinned == {"numbers": good}, "the rerun re-pins the label"
        # A restart re-runs every timer with no memory: the label query keeps it at one rerun.
        operator.stop()
        operator.start()
        log = operator.log_path  # this start's log
        wait_for(
            "the restarted operator's lineage timer",
            lambda: True if "Timer 'lineage' succeeded" in log.read_text(errors="replace") else None,
            operator=operator,
        )
        assert len(reruns()) == 1
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, new)


def test_a_run_pinned_to_an_invalid_bundle_fails_with_input_invalid_and_no_pod(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: tuple[str, Client, Path],
) -> None:
    _url, client, writer = store
    bundle = _upload(client, writer, "7 8 9")
    _invalidate(store, bundle, "wrong calibration")
    name = create_run(spec(inputs=[{"name": "numbers", "repo": "in", "bundle": bundle, "path": "in/numbers"}]))
    run = wait_for_phase(custom, name, "Failed", operator)
    assert run["status"]["reason"] == "InputInvalid"
    for part in (bundle, "wrong calibration", "datarun revalidate", "spec.inputs[0].allowInvalid"):
        assert part in run["status"]["message"], part
    wait_for_event(core_v1, name, ("Warning", "InputInvalid"), operator)
    assert pods_of(core_v1, name) == []
