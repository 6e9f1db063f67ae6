"""The Kube facade against a tiny HTTP stand-in for the apiserver: paths, verbs, content types,
404/409 handling, and that the pod the builder made reaches the API byte-for-byte (the typed
client validates the dict into its model and must not drop or rename a field)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes
import pytest

from datarun_operator.builder import get_pod
from datarun_operator.kube import Kube
from datarun_operator.settings import Settings
from tests.operator.builders import BUNDLE_A, BUNDLE_DB, run, spec


class Api:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, Any]] = []
        self.responses: dict[tuple[str, str], tuple[int, Any]] = {}

    def answer(self, method: str, path: str, code: int, payload: Any) -> None:
        self.responses[(method, path)] = (code, payload)


@pytest.fixture
def api() -> Iterator[tuple[Api, Kube]]:
    state = Api()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            payload = json.loads(raw) if raw else None
            state.requests.append((self.command, self.path, self.headers.get("Content-Type", ""), payload))
            code, answer = state.responses.get(
                (self.command, self.path.split("?")[0]), (404, {"kind": "Status", "code": 404})
            )
            data = json.dumps(answer if answer is not None else payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield state, Kube(kubernetes.client.ApiClient(config))
    server.shutdown()


def test_the_pod_reaches_the_api_unchanged(api: tuple[Api, Kube], settings: Settings) -> None:
    state, kube = api
    raw = spec(
        env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        resources={"limits": {"memory": "1Gi"}},
        cache={"sizeLimit": "1Gi", "medium": "Memory"},
        databases=[{"name": "db", "port": 5432, "sourceRepo": "d", "sourceLabel": "l"}],
    )
    pod = get_pod(run(raw), {"numbers": BUNDLE_A, "db": BUNDLE_DB}, settings)
    state.answer("POST", "/api/v1/namespaces/team/pods", 201, None)
    assert kube.create_pod(pod) is True
    method, path, _ctype, sent = state.requests[-1]
    assert (method, path) == ("POST", "/api/v1/namespaces/team/pods")
    assert sent == pod


def test_an_existing_pod_is_409_not_an_error(api: tuple[Api, Kube], settings: Settings) -> None:
    state, kube = api
    state.answer(
        "POST", "/api/v1/namespaces/team/pods", 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
    )
    assert kube.create_pod(get_pod(run(), {"numbers": BUNDLE_A}, settings)) is False


def test_get_and_delete_pod(api: tuple[Api, Kube], settings: Settings) -> None:
    state, kube = api
    pod = get_pod(run(), {"numbers": BUNDLE_A}, settings)
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "main",
                "ready": True,
                "restartCount": 0,
                "image": "x",
                "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }
        ],
    }
    state.answer("GET", "/api/v1/namespaces/team/pods/job-run", 200, pod)
    got = kube.get_pod("team", "job-run")
    assert got is not None
    assert got["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] == "2026-01-01T00:00:00Z"
    assert got["metadata"]["ownerReferences"] == pod["metadata"]["ownerReferences"]
    assert kube.get_pod("team", "missing") is None
    state.answer("DELETE", "/api/v1/namespaces/team/pods/job-run", 200, {"kind": "Status"})
    assert kube.delete_pod("team", "job-run") is True
    assert state.requests[-1][1] == "/api/v1/namespaces/team/pods/job-run?propagationPolicy=Background"
    assert kube.delete_pod("team", "gone") is False


def test_status_is_merge_patched_on_the_subresource(api: tuple[Api, Kube]) -> None:
    state, kube = api
    path = "/apis/datarun.io/v1alpha1/namespaces/team/dataruns/job"
    state.answer("PATCH", f"{path}/status", 200, {})
    assert kube.patch_status("team", "job", {"phase": "Running"}) is True
    method, sent_path, ctype, sent = state.requests[-1]
    assert (method, sent_path, ctype) == ("PATCH", f"{path}/status", "application/merge-patch+json")
    assert sent == {"status": {"phase": "Running"}}
    assert kube.patch_status("team", "gone", {"phase": "Running"}) is False
    state.answer("GET", path, 200, {"metadata": {"name": "job"}, "spec": {}})
    assert kube.get_datarun("team", "job") == {"metadata": {"name": "job"}, "spec": {}}
    assert kube.get_datarun("team", "gone") is None
