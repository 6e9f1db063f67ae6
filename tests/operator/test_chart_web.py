"""The chart's `web.enabled`: the read-only web view, reachable only through port-forward."""

from __future__ import annotations

from typing import Any

from tests.operator.test_chart import helm, render

__all__ = ["helm"]  # the fixture, registered by import


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_off_by_default(helm: str) -> None:
    docs = render(helm, "--set", "store.url=az://acct/data")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-web")]


def test_enabled_serves_on_loopback_behind_a_service(helm: str) -> None:
    docs = render(
        helm,
        *("--set", "store.url=az://acct/data", "--set", "store.credentialsSecret=datarun-store"),
        *("--set", "web.enabled=true", "--set", "web.port=8100"),
    )
    deployment = _named(docs, "Deployment", "rel-datarun-web")
    service = _named(docs, "Service", "rel-datarun-web")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["datarun", "web", "--bind=127.0.0.1", "--port=8100", "--page-size=200"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DATARUN_STORE"] == "az://acct/data"
    assert container["envFrom"] == [{"secretRef": {"name": "datarun-store"}}]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Nothing listens on the pod IP, so the probe runs inside the container.
    assert "exec" in container["readinessProbe"] and "httpGet" not in container["readinessProbe"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "web", "port": 8100, "targetPort": "web"}]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    # The operator's Deployment and webhook Service must not pick up the web pods, nor the reverse.
    operator = _named(docs, "Deployment", "rel-datarun")
    operator_selector = operator["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in operator_selector.items())
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert not all(operator_labels.get(k) == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())
