"""Operator settings from the environment the chart sets, and the command line."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from datarun_operator import __main__ as entry
from datarun_operator.settings import Settings, SettingsError


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.store.url == "" and not settings.webhook.enabled
    assert settings.timeouts.heartbeat_seconds == 30


def test_every_variable_is_read() -> None:
    env = {
        "DATARUN_OPERATOR_SIDECAR_IMAGE": "s:1",
        "DATARUN_OPERATOR_WRAPPER_IMAGE": "w:1",
        "DATARUN_OPERATOR_WRAPPER_PATH": "/w.sh",
        "DATARUN_OPERATOR_IMAGE_PULL_POLICY": "Always",
        "DATARUN_OPERATOR_STORE_URL": "gs://b",
        "DATARUN_OPERATOR_CREDENTIALS_SECRET": "creds",
        "DATARUN_OPERATOR_CREDENTIALS_FILE_KEY": "key.json",
        "DATARUN_OPERATOR_READY_TIMEOUT": "1",
        "DATARUN_OPERATOR_UPLOAD_TIMEOUT": "2",
        "DATARUN_OPERATOR_HEARTBEAT_TIMEOUT": "3",
        "DATARUN_OPERATOR_MOUNT_TIMEOUT": "4",
        "DATARUN_OPERATOR_APP_HEARTBEAT_TIMEOUT": "5",
        "DATARUN_OPERATOR_RUN_SERVICE_ACCOUNT": "runner",
        "DATARUN_OPERATOR_RUN_POD_LABELS": '{"a": "b"}',
        "DATARUN_OPERATOR_RUN_POD_ANNOTATIONS": '{"c": "d"}',
        "DATARUN_OPERATOR_RUN_POD_NODE_SELECTOR": '{"pool": "batch"}',
        "DATARUN_OPERATOR_RUN_POD_TOLERATIONS": '[{"key": "batch", "operator": "Exists"}]',
        "DATARUN_OPERATOR_WEBHOOK_ENABLED": "true",
        "DATARUN_OPERATOR_WEBHOOK_ADDRESS": "127.0.0.1",
        "DATARUN_OPERATOR_WEBHOOK_PORT": "8443",
        "DATARUN_OPERATOR_WEBHOOK_CERT_FILE": "/c",
        "DATARUN_OPERATOR_WEBHOOK_KEY_FILE": "/k",
        "DATARUN_OPERATOR_WEBHOOK_CHECK_REPOS": "yes",
        "DATARUN_OPERATOR_RESYNC_SECONDS": "7.5",
        "DATARUN_OPERATOR_WORKERS": "3",
    }
    s = Settings.from_env(env)
    assert (s.images.sidecar, s.images.wrapper, s.images.wrapper_path, s.images.pull_policy) == (
        "s:1",
        "w:1",
        "/w.sh",
        "Always",
    )
    assert (s.store.url, s.store.credentials_secret, s.store.credentials_file_key) == ("gs://b", "creds", "key.json")
    t = s.timeouts
    assert (t.ready_seconds, t.upload_seconds, t.heartbeat_seconds, t.mount_seconds, t.app_heartbeat_seconds) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert (s.pod.service_account, dict(s.pod.labels), dict(s.pod.annotations)) == ("runner", {"a": "b"}, {"c": "d"})
    assert (dict(s.pod.node_selector), s.pod.tolerations) == (
        {"pool": "batch"},
        ({"key": "batch", "operator": "Exists"},),
    )
    w = s.webhook
    assert (w.enabled, w.address, w.port, w.cert_file, w.key_file, w.check_repos) == (
        True,
        "127.0.0.1",
        8443,
        "/c",
        "/k",
        True,
    )
    assert (s.resync_seconds, s.workers) == (7.5, 3)


def test_datarun_store_is_the_fallback_store() -> None:
    assert Settings.from_env({"DATARUN_STORE": "file:///s"}).store.url == "file:///s"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DATARUN_OPERATOR_READY_TIMEOUT", "soon", "not a number"),
        ("DATARUN_OPERATOR_WEBHOOK_ENABLED", "maybe", "use true or false"),
        ("DATARUN_OPERATOR_RUN_POD_LABELS", "a=b", "not JSON"),
        ("DATARUN_OPERATOR_RUN_POD_LABELS", "[1]", "JSON object"),
        ("DATARUN_OPERATOR_RUN_POD_TOLERATIONS", '{"key": "x"}', "JSON list of objects"),
        ("DATARUN_OPERATOR_RUN_POD_TOLERATIONS", "[", "not JSON"),
    ],
)
def test_bad_variables_name_themselves(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    assert entry.main(["-n", "team-a", "-n", "team-b", "--liveness", "http://0.0.0.0:8080/healthz"]) == 0
    assert calls[-1] == {
        "clusterwide": False,
        "namespaces": ["team-a", "team-b"],
        "standalone": True,
        "liveness_endpoint": "http://0.0.0.0:8080/healthz",
    }
    assert entry.main([]) == 0
    assert calls[-1]["clusterwide"] is True and calls[-1]["namespaces"] == []
