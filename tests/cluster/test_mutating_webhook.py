"""The mutating webhook through a real kube-apiserver: kopf serves ``handlers.inject`` over TLS on
127.0.0.1, a MutatingWebhookConfiguration points the apiserver at it, and what the apiserver stores
is what the tests read back. An annotated pod is stored with the sidecar, the init container, the
volumes and the wrapped command; a labelled pod without the annotation is stored as sent; a bad
annotation is refused by the apiserver with the webhook's message; a ConfigMap named by
``datarun.io/config`` is read through the real API.

The certificates are made with openssl (kopf's self-signed mode needs oscrypto, which fails on
OpenSSL 3.0.10+). The webhook configuration selects only pods with this module's own label value,
so other tests on the same apiserver never reach a webhook that is about to go away.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kopf.testing
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from datarun_operator import handlers
from datarun_operator.builder import FUSE, INIT
from datarun_operator.kube import Kube
from tests.cluster.controlplane import Cluster
from tests.operator.builders import make_settings

pytestmark = pytest.mark.cluster

NAMESPACE = "default"
RUN = uuid.uuid4().hex[:8]
SELECT = {"datarun.io/inject": "true", "datarun.io/test-webhook": RUN}
INPUTS = "- {name: numbers, repo: in, label: v1, path: in/numbers}"
OUTPUTS = "- {name: result, repo: out, path: out/result, label: latest}"
WRAPPER = "/datarun/bin/wrap_application.sh"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(where: Path) -> None:
    """A CA, and a server certificate for IP 127.0.0.1 signed by it (the apiserver checks the SAN)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=datarun-test-webhook-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=where)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "tls.key", "-out", "tls.csr",
            cwd=where)  # fmt: skip
    (where / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "ext.cnf", "-out", "tls.crt", cwd=where)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pod_manifest(name: str, annotations: dict[str, str] | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A step as Argo's controller makes it: an app container `main` with its command, next to `wait`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or SELECT, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "wait", "image": "example.invalid/argoexec:1"},
                {
                    "name": "main",
                    "image": "example.invalid/app:1",
                    "command": ["/var/run/argo/argoexec", "emissary", "--", "sh", "-c"],
                    "args": ["cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"],
                },
            ],
        },
    }


def asked(**more: str) -> dict[str, str]:
    return {"datarun.io/inject": "true", "datarun.io/inputs": INPUTS, "datarun.io/outputs": OUTPUTS, **more}


@pytest.fixture(scope="module")
def webhook_url(
    control_plane: Cluster, kube_api: kubernetes.client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """kopf serving the inject handler, and a MutatingWebhookConfiguration pointing at it."""
    certs = tmp_path_factory.mktemp("webhook-tls")
    make_certificates(certs)
    port = free_port()

    # Our own registry: the handler under test, and nothing that watches DataRuns (no CRD needed).
    registry = kopf.OperatorRegistry()
    kopf.on.mutate("", "v1", "pods", id="inject-datarun", operations=["CREATE"], registry=registry)(handlers.inject)
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    settings = kopf.OperatorSettings()
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1", port=port, certfile=str(certs / "tls.crt"), pkeyfile=str(certs / "tls.key")
    )
    settings.admission.managed = None
    settings.scanning.disabled = True

    api = kubernetes.client.AdmissionregistrationV1Api(kube_api)
    name = f"datarun-test-inject-{RUN}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.inject.datarun.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 10,
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "objectSelector": {"matchLabels": SELECT},
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/inject-datarun",
                    "caBundle": base64.b64encode((certs / "ca.crt").read_bytes()).decode(),
                },
            }
        ],
    }
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "SETTINGS", make_settings())
        patch.setattr(handlers, "_kube", Kube(kube_api))
        runner = kopf.testing.KopfRunner(
            ["run", "--standalone", "--namespace", NAMESPACE], registry=registry, settings=settings, timeout=30
        )
        with runner:
            api.create_mutating_webhook_configuration(config)  # type: ignore[arg-type]  # dicts are accepted
            try:
                wait_until_served(kubernetes.client.CoreV1Api(kube_api))
                yield config["webhooks"][0]["clientConfig"]["url"]  # type: ignore[index]
            finally:
                api.delete_mutating_webhook_configuration(name)
                if saved is None:
                    del os.environ["KUBECONFIG"]
                else:
                    os.environ["KUBECONFIG"] = saved


def wait_until_served(core: kubernetes.client.CoreV1Api, timeout: float = 60.0) -> None:
    """Until the apiserver has loaded the configuration and kopf answers: dry-run creates (webhooks with
    sideEffects None are called for them) come back injected."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if FUSE in names(dry_run(core, pod_manifest("probe", asked()))["spec"]["containers"]):
                return
            last = "the pod came back without the sidecar"
        except ApiException as err:
            last = f"{err.status}: {err.body}"
        time.sleep(0.2)
    pytest.fail(f"the webhook was not served within {timeout:.0f} s; last: {last}")


@pytest.fixture
def create(webhook_url: str, core_v1: kubernetes.client.CoreV1Api) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create a pod in `default` and return it as stored (raw JSON); the pods are deleted afterwards."""
    created: list[str] = []

    def make(annotations: dict[str, str] | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
        name = f"inject-{uuid.uuid4().hex[:10]}"
        core_v1.create_namespaced_pod(NAMESPACE, pod_manifest(name, annotations, labels))  # type: ignore[arg-type]
        created.append(name)
        return stored(core_v1, name)

    yield make
    for name in created:
        try:
            core_v1.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        except ApiException as err:
            if err.status != 404:
                raise


def stored(core_v1: kubernetes.client.CoreV1Api, name: str) -> dict[str, Any]:
    return raw(core_v1.read_namespaced_pod(name, NAMESPACE, _preload_content=False))


def raw(response: Any) -> dict[str, Any]:
    """The JSON the apiserver sent (the client's models would hide what is not in them)."""
    pod: dict[str, Any] = json.loads(response.data)
    return pod


def dry_run(core_v1: kubernetes.client.CoreV1Api, manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod as it would be stored; webhooks with sideEffects None are called for dry runs too."""
    return raw(core_v1.create_namespaced_pod(NAMESPACE, manifest, dry_run="All", _preload_content=False))  # type: ignore[arg-type]


def names(items: list[dict[str, Any]] | None) -> list[str]:
    return [item["name"] for item in items or []]


def test_an_annotated_pod_is_stored_with_the_sidecar_volumes_and_wrapper(create: Callable[..., dict[str, Any]]) -> None:
    pod = create(asked())

    spec = pod["spec"]
    assert names(spec["containers"]) == ["wait", "main", FUSE]
    assert names(spec["initContainers"]) == [INIT]
    assert names(spec["volumes"]) == ["datarun-coord", "datarun-bin", "datarun-data", "datarun-cache"]
    main = spec["containers"][1]
    cut = main["command"].index("--") + 1
    assert main["command"][:cut] == ["/var/run/argo/argoexec", "emissary", "--"]
    assert main["command"][cut] == WRAPPER and main["command"][-3:] == ["--", "sh", "-c"]
    assert main["args"] == ["cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env == {"DATARUN_INPUT_NUMBERS": "/data/in/numbers", "DATARUN_OUTPUT_RESULT": "/data/out/result"}
    data = next(m for m in main["volumeMounts"] if m["name"] == "datarun-data")
    assert data["mountPropagation"] == "HostToContainer"
    fuse = spec["containers"][2]
    assert fuse["securityContext"]["privileged"] is True
    assert any(w.startswith("bundle mount --repo=in --label=v1") for w in fuse["command"]), "labels: the sidecar pins"
    uid = next(e for e in fuse["env"] if e["name"] == "DATARUN_POD_UID")
    assert uid["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert pod["metadata"]["annotations"]["datarun.io/injected"] == f"{INIT},{FUSE}"


def test_a_labelled_pod_without_the_annotation_is_stored_as_sent(create: Callable[..., dict[str, Any]]) -> None:
    pod = create({"datarun.io/inputs": INPUTS})
    assert names(pod["spec"]["containers"]) == ["wait", "main"]
    assert "initContainers" not in pod["spec"]
    assert pod["spec"]["containers"][1]["command"] == ["/var/run/argo/argoexec", "emissary", "--", "sh", "-c"]
    assert "datarun.io/injected" not in pod["metadata"]["annotations"]


def test_a_bad_annotation_is_refused_by_the_apiserver_with_the_message(
    webhook_url: str, core_v1: kubernetes.client.CoreV1Api
) -> None:
    bad = asked(**{"datarun.io/inputs": "- {name: numbers, repo: in, path: in/numbers}"})
    with pytest.raises(ApiException) as caught:
        core_v1.create_namespaced_pod(NAMESPACE, pod_manifest("refused", bad))  # type: ignore[arg-type]
    assert caught.value.status == 422
    status = json.loads(str(caught.value.body))
    assert 'admission webhook "pods.inject.datarun.io" denied the request' in status["message"]
    assert "datarun.io/inputs[0].label: give exactly one of `label` or `bundle`" in status["message"]
    with pytest.raises(ApiException) as gone:
        core_v1.read_namespaced_pod("refused", NAMESPACE)
    assert gone.value.status == 404


def test_a_configmap_named_by_the_pod_is_read_through_the_api(
    create: Callable[..., dict[str, Any]], core_v1: kubernetes.client.CoreV1Api
) -> None:
    name = f"datarun-shared-{RUN}"
    body = {"metadata": {"name": name}, "data": {"inputs": INPUTS, "cache": "{sizeLimit: 2Gi}"}}
    core_v1.create_namespaced_config_map(NAMESPACE, body)  # type: ignore[arg-type]
    try:
        pod = create({"datarun.io/inject": "true", "datarun.io/config": name})
        assert names(pod["spec"]["containers"]) == ["wait", "main", FUSE]
        cache = next(v for v in pod["spec"]["volumes"] if v["name"] == "datarun-cache")
        assert cache["emptyDir"] == {"sizeLimit": "2Gi"}
        with pytest.raises(ApiException) as caught:
            create({"datarun.io/inject": "true", "datarun.io/config": "no-such-config"})
        assert "datarun.io/config: no ConfigMap `no-such-config` in namespace `default`" in str(caught.value.body)
    finally:
        core_v1.delete_namespaced_config_map(name, NAMESPACE)


def test_an_injected_pod_sent_again_is_not_injected_twice(
    create: Callable[..., dict[str, Any]], core_v1: kubernetes.client.CoreV1Api
) -> None:
    """What reinvocation relies on: a pod that carries the injection is left as it is."""
    first = create(asked())
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{first['metadata']['name']}-again",
            "labels": first["metadata"]["labels"],
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {k: v for k, v in first["spec"].items() if k != "nodeName"},
    }
    second = dry_run(core_v1, again)
    assert names(second["spec"]["containers"]) == ["wait", "main", FUSE]
    assert names(second["spec"]["initContainers"]) == [INIT]
    assert [c.get("command") for c in second["spec"]["containers"]] == [
        c.get("command") for c in first["spec"]["containers"]
    ]
