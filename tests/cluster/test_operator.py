"""The operator against a real kube-apiserver: the chart's CRD and RBAC installed, the operator running as the
chart's ServiceAccount in its own process, kube-scheduler binding pods to the kwok node, and kwok ending them the
way their containers would (see tests/cluster/stages/pod-finish.yaml).

Nothing runs inside the pods here; the sidecars' termination messages are made by the sidecar's own code
(``tests.operator.builders.fuse_result``) and handed to kwok. Real containers are the containers tier's job.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from datarun.repo import Client, connect
from datarun_operator.builder import FUSE, INIT, LABEL_RUN, MAIN
from datarun_operator.models import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import Cluster, free_port
from tests.cluster.kubelet import ContainerEnd, finish_pod
from tests.cluster.operator_harness import (
    OperatorProcess,
    ensure_namespace,
    install_chart,
    make_tls,
    service_account_kubeconfig,
    tool,
    validating_webhook_for_loopback,
)
from tests.operator.builders import fuse_result, spec

pytestmark = pytest.mark.cluster

RUNS_NAMESPACE = "datarun-tests"
SIDECAR_IMAGE = "localhost/datarun-sidecar:test"
TIMEOUT = 30.0
KWOK_NODE_SELECTOR = {"type": "kwok"}  # a label of the kwok node (tests/cluster/controlplane.py)


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart(control_plane: Cluster) -> list[dict[str, Any]]:
    return install_chart(control_plane)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client, str]]:
    """A local store with repo `in` (label v1 -> a bundle) and repo `out`; (url, client, bundle id of v1)."""
    root = tmp_path_factory.mktemp("store")
    url = f"file://{root}"
    data = tmp_path_factory.mktemp("input")
    (data / "numbers.txt").write_text("1 2 3\n")
    client = connect(url)
    client.create_repo("in", "inputs")
    client.create_repo("out", "outputs")
    bundle = client.upload("in", str(data), "numbers", label="v1").bundle.id
    yield url, client, bundle
    client.close()


@pytest.fixture(scope="module")
def webhook_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path_factory.mktemp("webhook-tls"))


def kwok_operator_env(store_url: str) -> dict[str, str]:
    """The operator's settings for runs that kwok ends: this module's store, the locally built images."""
    return {
        "DATARUN_OPERATOR_STORE_URL": store_url,
        "DATARUN_OPERATOR_SIDECAR_IMAGE": SIDECAR_IMAGE,
        "DATARUN_OPERATOR_WRAPPER_IMAGE": SIDECAR_IMAGE,
        "DATARUN_OPERATOR_RESYNC_SECONDS": "3",
        # On a real cluster (--kubeconfig, --kind) only the kwok node may get the run pods.
        "DATARUN_OPERATOR_RUN_POD_NODE_SELECTOR": json.dumps(KWOK_NODE_SELECTOR),
    }


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    chart: list[dict[str, Any]],
    store: tuple[str, Client, str],
    webhook_tls: tuple[Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    kube_api: kubernetes.client.ApiClient,
) -> Iterator[OperatorProcess]:
    """The operator as the chart's ServiceAccount, serving the validating webhook on loopback, registered with the
    chart's own ValidatingWebhookConfiguration (pointed at 127.0.0.1)."""
    work = tmp_path_factory.mktemp("operator")
    ca, cert, key = webhook_tls
    port = free_port()
    kubeconfig = service_account_kubeconfig(control_plane, work / "kubeconfig")
    proc = OperatorProcess(
        kubeconfig,
        work,
        env={
            **kwok_operator_env(store[0]),
            "DATARUN_OPERATOR_WEBHOOK_ENABLED": "true",
            "DATARUN_OPERATOR_WEBHOOK_ADDRESS": "127.0.0.1",
            "DATARUN_OPERATOR_WEBHOOK_PORT": str(port),
            "DATARUN_OPERATOR_WEBHOOK_CERT_FILE": str(cert),
            "DATARUN_OPERATOR_WEBHOOK_KEY_FILE": str(key),
            "DATARUN_OPERATOR_WEBHOOK_CHECK_REPOS": "true",
        },
    )
    admission = kubernetes.client.AdmissionregistrationV1Api(kube_api)
    config = validating_webhook_for_loopback(tool(control_plane, "helm"), ca, port)
    ensure_namespace(kube_api, RUNS_NAMESPACE)
    proc.start()
    admission.create_validating_webhook_configuration(config)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        admission.delete_validating_webhook_configuration(config["metadata"]["name"])
        proc.stop()


@pytest.fixture
def custom(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_api)


@pytest.fixture
def create_run(operator: OperatorProcess, custom: kubernetes.client.CustomObjectsApi) -> Iterator[Callable[..., str]]:
    """Create a DataRun (unique name) in the runs namespace; whatever is left is deleted afterwards."""
    names: list[str] = []

    def create(spec_: dict[str, Any] | None = None) -> str:
        name = f"run-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DataRun",
            "metadata": {"name": name},
            "spec": spec_ if spec_ is not None else spec(),
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, body)
        names.append(name)
        return name

    yield create
    for name in names:
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, name)
        except ApiException as err:
            if err.status != 404:
                raise


# -- helpers ----------------------------------------------------------------------------------------------------


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = TIMEOUT, operator: OperatorProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            logs = f"\noperator log:\n{operator.tail()}" if operator else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{logs}")
        time.sleep(0.1)
    return value


def get_run(custom: kubernetes.client.CustomObjectsApi, name: str) -> dict[str, Any] | None:
    try:
        return cast(dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def get_pod(core_v1: kubernetes.client.CoreV1Api, name: str) -> dict[str, Any] | None:
    try:
        response: Any = core_v1.read_namespaced_pod(name, RUNS_NAMESPACE, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(json.loads(response.data))


def wait_for_phase(
    custom: kubernetes.client.CustomObjectsApi, name: str, phase: str, operator: OperatorProcess
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        run = get_run(custom, name)
        return run if run and (run.get("status") or {}).get("phase") == phase else None

    try:
        return dict(wait_for(f"DataRun {name} to be {phase}", probe, operator=operator))
    except pytest.fail.Exception:
        run = get_run(custom, name)
        print(f"DataRun {name} status: {json.dumps((run or {}).get('status'), indent=1)}")
        print(f"pod: {json.dumps(get_pod(kubernetes.client.CoreV1Api(custom.api_client), name + '-run'), indent=1)}")
        raise


def wait_for_pod(
    core_v1: kubernetes.client.CoreV1Api, name: str, operator: OperatorProcess, phase: str = ""
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = get_pod(core_v1, f"{name}-run")
        if pod is None:
            return None
        return pod if not phase or (pod.get("status") or {}).get("phase") == phase else None

    return dict(wait_for(f"pod of {name}" + (f" to be {phase}" if phase else ""), probe, operator=operator))


def finish(core_v1: kubernetes.client.CoreV1Api, name: str, codes: dict[str, int], messages: dict[str, str]) -> None:
    """End the run's pod as its containers would have: exit codes and termination messages."""
    ends = {c: ContainerEnd(codes.get(c, 0), messages.get(c, "")) for c in {*codes, *messages}}
    finish_pod(core_v1, RUNS_NAMESPACE, f"{name}-run", ends)


def events_of(core_v1: kubernetes.client.CoreV1Api, name: str) -> list[tuple[str, str]]:
    events = core_v1.list_namespaced_event(RUNS_NAMESPACE, field_selector=f"involvedObject.name={name}")
    return [(str(e.type), str(e.reason)) for e in events.items]


def wait_for_event(
    core_v1: kubernetes.client.CoreV1Api, name: str, event: tuple[str, str], operator: OperatorProcess
) -> list[tuple[str, str]]:
    """The run's Events once ``event`` (type, reason) is among them: kopf posts Events in the background, after
    the status patch that goes with them, so a test that saw the status may be ahead of the Event."""
    found = wait_for(
        f"Event {event} on {name}",
        lambda: seen if event in (seen := events_of(core_v1, name)) else None,
        operator=operator,
    )
    return list(found)


def pods_of(core_v1: kubernetes.client.CoreV1Api, name: str) -> list[str]:
    pods = core_v1.list_namespaced_pod(RUNS_NAMESPACE, label_selector=f"{LABEL_RUN}={name}")
    return [str(p.metadata.name) for p in pods.items if p.metadata]


def rejection(err: ApiException) -> str:
    body = json.loads(err.body or "{}")
    return str(body.get("message", err.body))


# -- tests ------------------------------------------------------------------------------------------------------


def test_a_datarun_gets_one_pod_of_the_built_shape_with_its_inputs_pinned(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: tuple[str, Client, str],
    control_plane: Cluster,
) -> None:
    name = create_run()
    pod = wait_for_pod(core_v1, name, operator)
    run = get_run(custom, name)
    assert run is not None

    # Pinned before the pod existed, to the bundle label v1 names.
    assert run["status"]["pinnedInputs"] == {"numbers": store[2]}
    assert run["status"]["podName"] == f"{name}-run"

    meta = pod["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DataRun",
            "name": name,
            "uid": run["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][LABEL_RUN] == name
    spec_ = pod["spec"]
    assert spec_["restartPolicy"] == "Never"
    assert spec_["nodeSelector"] == KWOK_NODE_SELECTOR
    assert [c["name"] for c in spec_["initContainers"]] == [INIT]
    containers = {c["name"]: c for c in spec_["containers"]}
    assert sorted(containers) == sorted([MAIN, FUSE])
    main, fuse = containers[MAIN], containers[FUSE]
    assert main["image"] == "busybox:1.36"
    assert main["command"][0].endswith("/wrap_application.sh")
    assert main["command"][-3:] == ["sh", "-c", "cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"]
    assert not (main.get("securityContext") or {}).get("privileged")
    assert fuse["image"] == SIDECAR_IMAGE
    assert fuse["securityContext"]["privileged"] is True
    propagation = {m["mountPath"]: m.get("mountPropagation") for m in main["volumeMounts"]}
    assert "HostToContainer" in propagation.values()
    sidecar_argv = [*fuse.get("command", []), *fuse.get("args", [])]
    assert any(store[2] in arg for arg in sidecar_argv), "the sidecar mounts the pinned bundle, not the label"

    # kube-scheduler bound it to the kwok node, and kwok started it.
    pod = wait_for_pod(core_v1, name, operator, phase="Running")
    assert pod["spec"]["nodeName"] == control_plane.node_name
    run = wait_for_phase(custom, name, "Running", operator)
    wait_for_event(core_v1, name, ("Normal", "PodCreated"), operator)
    assert pods_of(core_v1, name) == [f"{name}-run"]


def test_a_finished_pod_gives_outputs_and_succeeded(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: tuple[str, Client, str],
) -> None:
    name = create_run()
    wait_for_pod(core_v1, name, operator, phase="Running")
    bundle_out = "2Kx000000000000000000000out"
    message = fuse_result(
        [
            {
                "name": "result",
                "repo": "out",
                "path": "/data/out/result",
                "label": "latest",
                "bundle": bundle_out,
                "uploaded": True,
            }
        ]
    )
    finish(core_v1, name, {MAIN: 0, FUSE: 0}, {FUSE: message})

    run = wait_for_phase(custom, name, "Succeeded", operator)
    status = run["status"]
    assert status["outputs"] == [
        {"name": "result", "repo": "out", "bundle": bundle_out, "label": "latest", "error": ""}
    ]
    assert status["appExitCode"] == 0
    assert status["startTime"] and status["completionTime"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"InputsPinned": "True", "AppCompleted": "True", "OutputsUploaded": "True"}
    reasons = wait_for_event(core_v1, name, ("Normal", "Succeeded"), operator)
    assert ("Normal", "InputsPinned") in reasons


def test_a_failed_app_fails_the_run_with_its_exit_code(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
) -> None:
    name = create_run()
    wait_for_pod(core_v1, name, operator, phase="Running")
    message = fuse_result(
        [
            {
                "name": "result",
                "repo": "out",
                "path": "/data/out/result",
                "label": "latest",
                "skipped_reason": "the app failed",
            }
        ],
        app_code=3,
    )
    finish(core_v1, name, {MAIN: 3, FUSE: 0}, {FUSE: message})

    run = wait_for_phase(custom, name, "Failed", operator)
    status = run["status"]
    assert status["reason"] == "AppFailed", status
    assert "exited with code 3" in status["message"]
    assert status["appExitCode"] == 3
    assert [o.get("bundle", "") for o in status["outputs"]] == [""]
    wait_for_event(core_v1, name, ("Warning", "AppFailed"), operator)


def test_an_unknown_label_fails_the_run_naming_the_field_and_makes_no_pod(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
) -> None:
    name = create_run(spec(inputs=[{"name": "numbers", "repo": "in", "label": "nope", "path": "in/numbers"}]))
    run = wait_for_phase(custom, name, "Failed", operator)
    assert run["status"]["reason"] == "PinFailed"
    assert run["status"]["message"].startswith("spec.inputs[0].label:")
    assert "nope" in run["status"]["message"]
    assert pods_of(core_v1, name) == []


def test_deleting_a_datarun_deletes_its_pod_and_then_the_datarun(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
) -> None:
    name = create_run()
    wait_for_pod(core_v1, name, operator, phase="Running")
    run = get_run(custom, name)
    assert run is not None and "datarun.io/finalizer" in run["metadata"]["finalizers"]

    custom.delete_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, name)

    # No kube-controller-manager runs here, so nothing but the operator's finalizer handler can remove the pod.
    wait_for(f"pod {name}-run to go", lambda: True if get_pod(core_v1, f"{name}-run") is None else None)
    wait_for(f"DataRun {name} to go", lambda: True if get_run(custom, name) is None else None)


def test_restarting_the_operator_mid_run_makes_no_second_pod_and_loses_no_status(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
) -> None:
    running = create_run()
    wait_for_phase(custom, running, "Running", operator)
    first_uid = wait_for_pod(core_v1, running, operator)["metadata"]["uid"]

    racing = create_run()  # killed below while it may be between pinning and creating the pod
    operator.kill()
    try:
        bundle_out = "2Kx00000000000000000restart"
        result = {"name": "result", "repo": "out", "path": "/data/out/result", "bundle": bundle_out, "uploaded": True}
        finish(core_v1, running, {MAIN: 0, FUSE: 0}, {FUSE: fuse_result([result])})
        # With the operator down its webhook is too, and the chart's failurePolicy (Fail) keeps out what it did not
        # check: a clear error now rather than a run nobody validated.
        with pytest.raises(ApiException) as refused:
            create_run()
        assert "dataruns.validate.datarun.io" in rejection(refused.value)
        time.sleep(1.0)
    finally:
        operator.start()

    run = wait_for_phase(custom, running, "Succeeded", operator)
    assert run["status"]["outputs"][0]["bundle"] == bundle_out
    assert run["status"]["pinnedInputs"], "the pins written before the restart are kept"
    pod = get_pod(core_v1, f"{running}-run")
    assert pod is not None and pod["metadata"]["uid"] == first_uid, "the pod was adopted, not re-created"
    wait_for_phase(custom, racing, "Running", operator)
    assert pods_of(core_v1, running) == [f"{running}-run"]
    assert pods_of(core_v1, racing) == [f"{racing}-run"], "one pod, whenever the kill came"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.pop("image"), "spec.image"),
        (lambda s: s["inputs"][0].update(mode="copy"), "spec.inputs[0].mode"),
        (lambda s: s["inputs"][0].update(label="Bad Label!"), "spec.inputs[0].label"),
        (lambda s: s["inputs"][0].update(bundle="2Kx0000000000000000000000aa"), "spec.inputs[0].label"),
    ],
    ids=["missing-image", "bad-mode", "bad-label-name", "label-and-bundle"],
)
def test_the_crd_schema_rejects_a_bad_spec_naming_the_field(
    operator: OperatorProcess,
    custom: kubernetes.client.CustomObjectsApi,
    mutate: Callable[[dict[str, Any]], object],
    field: str,
) -> None:
    bad = spec()
    mutate(bad)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataRun", "metadata": {"name": "bad-schema"}, "spec": bad}
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, body)
    assert caught.value.status == 422
    assert field in rejection(caught.value)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (spec(outputs=[{"name": "result", "repo": "out", "path": "in/numbers"}]), "spec.outputs[0].path"),
        (spec(outputs=[{"name": "result", "repo": "no-such-repo", "path": "out/result"}]), "spec.outputs[0].repo"),
        (
            spec(outputs=[{"name": "numbers", "repo": "out", "path": "out/result"}]),
            "spec.outputs[0].name",
        ),
    ],
    ids=["colliding-paths", "unknown-repo", "name-used-twice"],
)
def test_the_webhook_rejects_what_the_schema_cannot_say_naming_the_field(
    operator: OperatorProcess, custom: kubernetes.client.CustomObjectsApi, bad: dict[str, Any], field: str
) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataRun", "metadata": {"name": "bad-webhook"}, "spec": bad}
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, body)
    message = rejection(caught.value)
    assert "dataruns.validate.datarun.io" in message, message  # it was the webhook that said no
    assert field in message, message


def test_a_spec_change_after_the_start_is_refused(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
) -> None:
    name = create_run()
    wait_for_phase(custom, name, "Running", operator)
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(GROUP, VERSION, RUNS_NAMESPACE, PLURAL, name, {"spec": {"image": "x:2"}})
    assert "spec" in rejection(caught.value)
    run = get_run(custom, name)
    assert run is not None and run["spec"]["image"] == "busybox:1.36"


def test_the_operator_runs_with_the_charts_least_privilege_rbac(
    control_plane: Cluster, operator: OperatorProcess
) -> None:
    """Everything above ran with the chart's ServiceAccount token; here is what that token may and may not do."""

    def can(verb: str, resource: str, namespace: str = RUNS_NAMESPACE) -> str:
        out = subprocess.run(
            [str(tool(control_plane, "kubectl")), "--kubeconfig", str(operator.kubeconfig), "auth", "can-i",
             verb, resource, "-n", namespace],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout.strip()

    allowed = [
        ("create", "pods"),
        ("delete", "pods"),
        ("watch", "dataruns.datarun.io"),
        ("patch", "dataruns.datarun.io/status"),
        ("create", "events"),
        ("create", "dataruns.datarun.io"),  # the reruns of `onInputInvalidated: rerun`
    ]
    denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "dataruns.datarun.io"),
        ("update", "pods"),
        ("create", "deployments.apps"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    assert {f"{v} {r}": can(v, r) for v, r in allowed} == {f"{v} {r}": "yes" for v, r in allowed}
    assert {f"{v} {r}": can(v, r) for v, r in denied} == {f"{v} {r}": "no" for v, r in denied}


def test_a_second_identical_datarun_makes_no_pod_and_is_a_cache_hit(
    operator: OperatorProcess,
    create_run: Callable[..., str],
    custom: kubernetes.client.CustomObjectsApi,
    core_v1: kubernetes.client.CoreV1Api,
    store: tuple[str, Client, str],
    tmp_path: Path,
) -> None:
    _url, client, _ = store
    # A digest-pinned image (kwok pulls nothing) and a param of its own, so no other test's run matches.
    the_spec = spec(image=f"registry.example/tool@sha256:{'3' * 64}", params={"case": uuid.uuid4().hex})
    first = create_run(the_spec)
    wait_for_pod(core_v1, first, operator, phase="Running")
    (tmp_path / "r.txt").write_text("result\n")
    bundle = client.upload("out", tmp_path, "the first run's output").bundle.id
    output = {"name": "result", "repo": "out", "path": "/data/out/result", "label": "latest", "bundle": bundle,
              "uploaded": True}  # fmt: skip
    finish(core_v1, first, {MAIN: 0, FUSE: 0}, {FUSE: fuse_result([output])})
    done = wait_for_phase(custom, first, "Succeeded", operator)

    second = create_run(the_spec)
    run = wait_for_phase(custom, second, "Succeeded", operator)
    status = run["status"]
    assert (status["reason"], status["cachedFrom"]) == ("CacheHit", done["status"]["runRecord"])
    assert [o["bundle"] for o in status["outputs"]] == [bundle]
    assert pods_of(core_v1, second) == [] and get_pod(core_v1, f"{second}-run") is None
    record = client.runs.get(status["runRecord"])
    assert record.phase == "Cached" and record.cache is not None
    assert record.cache.cached_from == done["status"]["runRecord"]
    assert client.get_label("out", "latest").bundle == bundle
