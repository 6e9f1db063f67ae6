"""The throwaway control plane behaves like the cluster the operator tests need: a real v1.33 apiserver, kube-scheduler
binding pods to the kwok node, kwok running them and finishing their deletion (tests/cluster/stages), and the
kubelet stand-in (tests/cluster/kubelet.py) ending them with per-container exit codes and termination messages."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import K8S_VERSION, Cluster, read_versions
from tests.cluster.kubelet import ContainerEnd, finish_pod

pytestmark = pytest.mark.cluster

T = TypeVar("T")
TIMEOUT = 30.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture
def make_pod(control_plane: Cluster, core_v1: kubernetes.client.CoreV1Api) -> Iterator[Callable[..., str]]:
    """Create pods bound to the kwok node, in ``default``; they are deleted afterwards.

    (No per-test namespace: without kube-controller-manager a deleted namespace never finishes terminating.)
    """
    created: list[str] = []

    def make(annotations: dict[str, str] | None = None, finalizers: list[str] | None = None) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}, "finalizers": finalizers or []},
            "spec": {
                "nodeName": control_plane.node_name,
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": "example.invalid/main:1"},
                    {"name": "sidecar", "image": "example.invalid/sidecar:1"},
                ],
            },
        }
        core_v1.create_namespaced_pod("default", pod)  # type: ignore[arg-type]  # the client takes dicts too
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            core_v1.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        except ApiException as err:
            if err.status != 404:
                raise


def phase_of(core_v1: kubernetes.client.CoreV1Api, name: str) -> str | None:
    status = core_v1.read_namespaced_pod(name, "default").status
    return status.phase if status else None


def wait_for_phase(core_v1: kubernetes.client.CoreV1Api, name: str, phase: str) -> kubernetes.client.V1Pod:
    def probe() -> kubernetes.client.V1Pod | None:
        pod = core_v1.read_namespaced_pod(name, "default")
        return pod if pod.status and pod.status.phase == phase else None

    return wait_for(f"pod {name} to be {phase}", probe)


def terminated_states(pod: kubernetes.client.V1Pod) -> dict[str, kubernetes.client.V1ContainerStateTerminated]:
    assert pod.status is not None
    states: dict[str, kubernetes.client.V1ContainerStateTerminated] = {}
    for status in pod.status.container_statuses or []:
        assert status.state is not None
        assert status.state.terminated is not None, status
        states[status.name] = status.state.terminated
    return states


def test_apiserver_is_the_pinned_kubernetes(control_plane: Cluster, kube_api: kubernetes.client.ApiClient) -> None:
    version = kubernetes.client.VersionApi(kube_api).get_code()
    assert version.git_version.startswith("v1.33."), version
    assert (version.major, version.minor) == ("1", "33")
    if control_plane.control_plane is not None:
        assert version.git_version == K8S_VERSION


def test_kwok_node_is_ready(control_plane: Cluster, core_v1: kubernetes.client.CoreV1Api) -> None:
    node = core_v1.read_node(control_plane.node_name)
    assert node.metadata is not None and node.metadata.annotations
    assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    assert node.status is not None
    ready = [c.status for c in node.status.conditions or [] if c.type == "Ready"]
    assert ready == ["True"]


def test_a_bound_pod_without_exit_code_runs_and_stays_running(
    core_v1: kubernetes.client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    name = make_pod()
    pod = wait_for_phase(core_v1, name, "Running")
    assert pod.status is not None and pod.status.pod_ip
    statuses = pod.status.container_statuses or []
    assert sorted(s.name for s in statuses) == ["main", "sidecar"]
    assert all(s.ready and s.state and s.state.running for s in statuses)
    time.sleep(1.0)
    assert phase_of(core_v1, name) == "Running"


def test_the_kubelet_stand_in_ends_each_container_its_own_way_with_its_termination_message(
    core_v1: kubernetes.client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    message = json.dumps({"bundles": ["sha256:" + "ab" * 32], "note": 'quotes " and \\ and <&> and\nnewline'})
    name = make_pod()
    wait_for_phase(core_v1, name, "Running")

    finish_pod(core_v1, "default", name, {"main": ContainerEnd(75), "sidecar": ContainerEnd(0, message)})

    pod = wait_for_phase(core_v1, name, "Failed")
    states = terminated_states(pod)
    assert {n: (s.exit_code, s.reason, s.message) for n, s in states.items()} == {
        "main": (75, "Error", None),
        "sidecar": (0, "Completed", message),
    }
    assert json.loads(states["sidecar"].message or "")["note"].endswith("\nnewline")
    assert pod.status is not None
    assert not any(s.state and s.state.running for s in pod.status.container_statuses or []), "none is running"


@pytest.mark.parametrize("finalizers", [[], ["datarun.io/test-finalizer"]], ids=["plain", "with-finalizer"])
def test_deleting_a_pod_removes_it(
    core_v1: kubernetes.client.CoreV1Api, make_pod: Callable[..., str], finalizers: list[str]
) -> None:
    name = make_pod(finalizers=finalizers)
    wait_for_phase(core_v1, name, "Running")

    core_v1.delete_namespaced_pod(name, "default")  # default grace period: kwok, as the kubelet, finishes it

    def gone() -> bool | None:
        try:
            core_v1.read_namespaced_pod(name, "default")
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return None

    wait_for(f"pod {name} to be deleted", gone)


def test_built_kubectl_and_helm_report_their_pinned_versions(control_plane: Cluster) -> None:
    if control_plane.control_plane is None:
        pytest.skip("uses the binaries of the throwaway control plane")
    bin_dir = control_plane.control_plane.binaries["kube-apiserver"].parent
    kubectl, helm = bin_dir / "kubectl", bin_dir / "helm"
    if not (kubectl.exists() and helm.exists()):
        missing = f"kubectl/helm not built in {bin_dir} (tests/cluster/build.sh kubectl helm)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {missing}")
        pytest.skip(missing)
    nodes = subprocess.run(
        [kubectl, "--kubeconfig", control_plane.kubeconfig, "get", "node", control_plane.node_name, "-o", "name"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert nodes.stdout.strip() == f"node/{control_plane.node_name}"
    client = json.loads(
        subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, check=True).stdout
    )
    assert client["clientVersion"]["gitVersion"] == K8S_VERSION
    helm_version = subprocess.run(
        [helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=True
    ).stdout
    assert helm_version == read_versions()["HELM_VERSION"]
