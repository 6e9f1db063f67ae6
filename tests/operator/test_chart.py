"""The Helm chart: values documented, rendered with `helm template` when a helm binary exists.

helm is looked for at ``$DATARUN_HELM`` or ``$HOME/.cache/datarun/k8s/*/bin/helm`` (built by the
cluster-tier script). Without it these tests skip with the reason printed, except under CI=true,
where a missing helm is a failure.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from datarun_operator import crd
from datarun_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "datarun"


def find_helm() -> str | None:
    if os.environ.get("DATARUN_HELM"):
        return os.environ["DATARUN_HELM"]
    found = sorted(glob.glob(os.path.expanduser("~/.cache/datarun/k8s/*/bin/helm")))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_helm()
    if path is None or not os.access(path, os.X_OK):
        reason = "no helm binary at $DATARUN_HELM or ~/.cache/datarun/k8s/*/bin/helm (tests/cluster builds it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return path


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [helm, "template", "rel", str(CHART), "--namespace", "datarun-system", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


# -- without helm ------------------------------------------------------------------------------


def _leaves_without_comment(lines: list[str]) -> list[str]:
    """Keys with a value on their own line need a comment right above, at the same indent.
    (Group keys and the example quantities under `resources:` are exempt.)"""
    missing = []
    group: dict[int, str] = {}
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        key, _, rest = stripped.partition(":")
        group = {k: v for k, v in group.items() if k < indent}
        if not rest.strip():
            group[indent] = key
            continue
        if "resources" in group.values():
            continue
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not (above.strip().startswith("#") and len(above) - len(above.lstrip()) == indent):
            missing.append(".".join([*group.values(), key]))
    return missing


def test_every_value_has_a_comment() -> None:
    assert _leaves_without_comment((CHART / "values.yaml").read_text().splitlines()) == []


def test_values_are_camel_case_and_images_pinned() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(node: Any, path: str = "") -> list[str]:
        if not isinstance(node, dict):
            return []
        return [k for key, sub in node.items() for k in [f"{path}.{key}", *keys(sub, f"{path}.{key}")]]

    for key in keys(values):
        leaf = key.rsplit(".", 1)[-1]
        assert "_" not in leaf and "-" not in leaf and leaf[0].islower(), key
    for image in ("image", "sidecarImage", "wrapperImage"):
        assert values[image]["tag"] and values[image]["tag"] != "latest", image


def test_values_schema_is_json_and_covers_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_the_chart_documents_the_privileged_sidecar() -> None:
    for path in (CHART / "values.yaml", CHART / "README.md"):
        text = path.read_text()
        assert "datarun-fuse" in text and "privileged" in text, path
        assert "CAP_SYS_ADMIN" in text and "Bidirectional" in text, path


def test_the_webhook_paths_are_the_kopf_handler_ids() -> None:
    """kopf serves a handler at /<id>; the chart's webhook configurations must use those paths."""
    code = (
        "import kopf, datarun_operator.handlers\n"
        "print([h.id for h in kopf.get_default_registry()._webhooks.get_all_handlers()])\n"
    )
    env = {**os.environ, "DATARUN_OPERATOR_WEBHOOK_ENABLED": "true"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == "['validate-datarun', 'inject-datarun']"
    template = (CHART / "templates" / "webhook.yaml").read_text()
    assert "path: /validate-datarun" in template and "path: /inject-datarun" in template
    env["DATARUN_OPERATOR_WEBHOOK_ENABLED"] = "false"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == "[]", "no admission handler without a webhook server (kopf would refuse to start)"


# -- with helm ---------------------------------------------------------------------------------


def test_helm_lint(helm: str) -> None:
    proc = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render(helm: str) -> None:
    docs = render(helm, "--set", "store.url=az://acct/data", "--set", "store.credentialsSecret=datarun-store")
    kinds = by_kind(docs)
    assert set(kinds) == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "Secret",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "datarun" and labels["app.kubernetes.io/instance"] == "rel"


def test_rbac_is_least_privilege(helm: str) -> None:
    role = by_kind(render(helm))["ClusterRole"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("datarun.io",), ("dataruns",)): {"get", "list", "watch", "patch", "create"},  # create: reruns
        (("datarun.io",), ("dataruns/status",)): {"get", "patch"},
        (("datarun.io",), ("dataruns/finalizers",)): {"update"},
        (("",), ("pods",)): {"create", "get", "list", "watch", "delete"},
        (("",), ("events",)): {"create"},
        (("",), ("configmaps",)): {"get"},  # the mutating webhook's datarun.io/config
    }
    without_inject = by_kind(render(helm, "--set", "webhook.inject.enabled=false"))["ClusterRole"]
    assert [r for r in without_inject["rules"] if r["resources"] == ["configmaps"]] == []
    binding = by_kind(render(helm))["ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-datarun", "namespace": "datarun-system"}]


def test_the_deployment_configures_the_operator_settings(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "store.url=gs://bucket",
        "--set",
        "store.credentialsSecret=gcs",
        "--set",
        "store.credentialsFileKey=key.json",
        "--set",
        "runPods.serviceAccountName=runner",
        "--set",
        "operator.timeouts.ready=120",
        "--set",
        "sidecarImage.tag=9.9.9",
        "--set-json",
        'runPods.labels={"azure.workload.identity/use":"true"}',
        "--set",
        "openlineage.url=http://marquez:5000/api/v1/lineage",
        "--set",
        "operator.lineageSeconds=15",
    )
    deploy = by_kind(docs)["Deployment"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = Settings.from_env(env)
    assert settings.store.url == "gs://bucket" and settings.store.credentials_secret == "gcs"
    assert settings.store.credentials_file_key == "key.json"
    assert settings.images.sidecar == "ghcr.io/datarun/sidecar:9.9.9"
    assert settings.timeouts.ready_seconds == 120
    assert settings.pod.service_account == "runner"
    assert settings.pod.labels == {"azure.workload.identity/use": "true"}
    assert settings.webhook.enabled
    assert settings.openlineage_url == "http://marquez:5000/api/v1/lineage" and settings.lineage_seconds == 15
    assert (
        Settings.from_env(
            {
                e["name"]: e["value"]
                for e in by_kind(render(helm))["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
            }
        ).openlineage_url
        == ""
    ), "no URL by default: nothing is posted"
    assert container["envFrom"] == [{"secretRef": {"name": "gcs"}}]
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/datarun/credential"
    assert container["command"][:3] == ["python", "-m", "datarun_operator"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert "privileged" not in json.dumps(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_webhook_is_wired_to_the_service_and_the_ca(helm: str) -> None:
    kinds = by_kind(render(helm))
    hook = kinds["ValidatingWebhookConfiguration"]["webhooks"][0]
    assert hook["clientConfig"]["service"] == {
        "name": "rel-datarun-webhook",
        "namespace": "datarun-system",
        "port": 443,
        "path": "/validate-datarun",
    }
    assert hook["clientConfig"]["caBundle"] == kinds["Secret"]["data"]["ca.crt"]
    assert hook["rules"][0]["resources"] == ["dataruns"] and hook["sideEffects"] == "None"
    assert kinds["Secret"]["type"] == "kubernetes.io/tls"
    volumes = kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "rel-datarun-webhook-tls"}} in volumes


def test_the_mutating_webhook_selects_labelled_pods_and_reinvokes(helm: str) -> None:
    kinds = by_kind(render(helm))
    (hook,) = kinds["MutatingWebhookConfiguration"]["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "rel-datarun-webhook",
        "namespace": "datarun-system",
        "port": 443,
        "path": "/inject-datarun",
    }
    assert hook["clientConfig"]["caBundle"] == kinds["Secret"]["data"]["ca.crt"]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert (hook["sideEffects"], hook["failurePolicy"], hook["reinvocationPolicy"]) == ("None", "Fail", "IfNeeded")
    assert hook["objectSelector"] == {"matchLabels": {"datarun.io/inject": "true"}}
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "datarun-system"]}
        ]
    }
    custom = by_kind(
        render(
            helm,
            "--set",
            "webhook.inject.failurePolicy=Ignore",
            "--set-json",
            'webhook.inject.namespaceSelector={"matchLabels":{"team":"ml"}}',
        )
    )
    (hook,) = custom["MutatingWebhookConfiguration"]["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["namespaceSelector"] == {"matchLabels": {"team": "ml"}}
    assert "MutatingWebhookConfiguration" not in by_kind(render(helm, "--set", "webhook.inject.enabled=false"))


def test_webhook_modes(helm: str) -> None:
    off = by_kind(render(helm, "--set", "webhook.enabled=false", "--set", "metrics.enabled=false"))
    assert "ValidatingWebhookConfiguration" not in off and "Service" not in off
    assert "MutatingWebhookConfiguration" not in off
    assert [r for r in off["ClusterRole"]["rules"] if r["resources"] == ["configmaps"]] == []
    env = {e["name"]: e["value"] for e in off["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATARUN_OPERATOR_WEBHOOK_ENABLED"] == "false"
    cm = by_kind(render(helm, "--set", "webhook.tls.mode=certManager"))
    assert "Certificate" in cm and "Secret" not in cm
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = cm[kind]["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == "datarun-system/rel-datarun-webhook"
        assert "caBundle" not in cm[kind]["webhooks"][0]["clientConfig"]
    existing = by_kind(render(helm, "--set", "webhook.tls.mode=existing", "--set", "webhook.tls.caBundle=Q0E="))
    assert existing["ValidatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
    assert existing["MutatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="


def test_rbac_and_service_account_can_be_left_out(helm: str) -> None:
    kinds = by_kind(render(helm, "--set", "rbac.create=false", "--set", "serviceAccount.create=false"))
    assert not {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} & set(kinds)
    assert kinds["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_the_values_schema_refuses_bad_values(helm: str) -> None:
    for bad in (
        "webhook.tls.mode=sometimes",
        "sidecarImage.tag=latest",
        "store.url=s3://bucket",
        "webhook.inject.failurePolicy=Sometimes",
        "openlineage.url=marquez:5000",
    ):
        proc = subprocess.run(
            [helm, "template", "rel", str(CHART), "--set", bad], capture_output=True, text=True, check=False
        )
        assert proc.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


def test_the_chart_ships_the_generated_crd(helm: str) -> None:
    docs = render(helm, "--include-crds")
    (crd_doc,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crd_doc == crd.build_crd()


def test_metrics_are_served_and_the_service_monitor_is_behind_a_flag(helm: str) -> None:
    docs = render(helm)
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics"}]
    container = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DATARUN_OPERATOR_METRICS_PORT"] == "8000"
    assert {"name": "metrics", "containerPort": 8000} in container["ports"]
    assert "ServiceMonitor" not in {d["kind"] for d in docs}
    on = render(
        helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=kps"
    )
    (monitor,) = [d for d in on if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    (svc,) = [d for d in on if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    off = render(helm, "--set", "metrics.enabled=false")
    assert not [d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    deployment = by_kind(off)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in deployment["env"]}["DATARUN_OPERATOR_METRICS_PORT"] == "0"


def _index_env(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """DATARUN_INDEX entries of each Deployment's first container, by Deployment name."""
    out = {}
    for doc in docs:
        if doc["kind"] == "Deployment":
            env = doc["spec"]["template"]["spec"]["containers"][0]["env"]
            out[doc["metadata"]["name"]] = [e for e in env if e["name"] == "DATARUN_INDEX"]
    return out


def test_the_index_url_reaches_the_operator_and_the_web_view(helm: str) -> None:
    assert all(not found for found in _index_env(render(helm, "--set", "web.enabled=true")).values())
    plain = _index_env(render(helm, "--set", "index.url=postgresql://team@db/runs", "--set", "web.enabled=true"))
    assert len(plain) == 2
    for found in plain.values():
        assert found == [{"name": "DATARUN_INDEX", "value": "postgresql://team@db/runs"}]
        assert Settings.from_env({"DATARUN_INDEX": found[0]["value"]}).index.url == "postgresql://team@db/runs"


def test_an_index_dsn_with_a_password_comes_from_a_secret_key_only(helm: str) -> None:
    args = ("--set", "index.urlSecret=runs-index", "--set", "index.urlSecretKey=dsn", "--set", "web.enabled=true")
    docs = render(helm, *args)
    for found in _index_env(docs).values():
        assert found == [{"name": "DATARUN_INDEX", "valueFrom": {"secretKeyRef": {"name": "runs-index", "key": "dsn"}}}]
    both = subprocess.run(
        [helm, "template", "rel", str(CHART), "--set", "index.url=postgresql://a@b/c", "--set", "index.urlSecret=s"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert both.returncode != 0 and "set index.url or index.urlSecret, not both" in both.stderr
    wrong = subprocess.run(
        [helm, "template", "rel", str(CHART), "--set", "index.url=mysql://x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0 and "index" in wrong.stderr
