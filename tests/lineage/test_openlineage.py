"""`lineage export --format openlineage`: RunEvents posted to a local HTTP receiver that checks each one
against the OpenLineage models of PyPI `openlineage-python` (its attrs classes validate run ids, times, URIs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from datarun.store import LocalStore
from tests.catalog.writer import run_doc, write_version
from tests.cli.conftest import Env, env

__all__ = ["env"]

TOP_LEVEL = {"eventType", "eventTime", "producer", "schemaURL", "run", "job", "inputs", "outputs"}


def check_event(event: dict[str, Any]) -> None:
    """Raise unless ``event`` is an OpenLineage 2-0-2 RunEvent the client's models accept unchanged."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.serde import Serde

    assert set(event) <= TOP_LEVEL and {"eventTime", "producer", "schemaURL", "run", "job"} <= set(event)
    model = RunEvent(
        eventType=RunState(event["eventType"]),
        eventTime=event["eventTime"],
        run=Run(runId=event["run"]["runId"]),
        job=Job(namespace=event["job"]["namespace"], name=event["job"]["name"]),
        producer=event["producer"],
        inputs=[InputDataset(namespace=d["namespace"], name=d["name"]) for d in event["inputs"]],
        outputs=[OutputDataset(namespace=d["namespace"], name=d["name"]) for d in event["outputs"]],
    )
    back = Serde.to_dict(model)
    assert back["schemaURL"] == event["schemaURL"]
    for key in ("eventType", "eventTime", "producer"):
        assert back[key] == event[key]
    assert back["run"]["runId"] == event["run"]["runId"]
    assert (back["job"]["namespace"], back["job"]["name"]) == (event["job"]["namespace"], event["job"]["name"])
    assert [(d["namespace"], d["name"]) for d in back.get("inputs", [])] == [
        (d["namespace"], d["name"]) for d in event["inputs"]
    ]
    for facet in event["run"]["facets"].values():  # custom facets must say who made them and their schema
        assert facet["_producer"].startswith("https://") and facet["_schemaURL"].startswith("https://")


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    check_event(body)
                except Exception as err:
                    receiver.errors.append(repr(err))
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.events.append(body)
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v1/lineage"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_runs_become_valid_run_events(env: Env, receiver: Receiver) -> None:
    env.ok("repo", "create", "--repo", "r", "--description", "d")
    store = LocalStore(env.store)
    link = [{"name": "data", "repo": "r", "bundle": "3MxsAKEXsfyWG3xgP3yRyjBmvjb"}]
    out = [{"name": "model", "repo": "r", "bundle": "3MxsAKEXsfyWG3xgP3yRyjBmvjc"}]
    done = run_doc(title="train", start="2026-01-02T00:00:00Z", end="2026-01-02T01:00:00Z", inputs=link, outputs=out)
    failed = run_doc(title="eval", phase="Failed", start="2026-01-03T00:00:00Z", end="2026-01-03T00:10:00Z")
    running = run_doc(title="serve", phase="Running", start="2026-01-04T00:00:00Z", end=None)
    for doc in (done, failed, running):
        write_version(store, doc)
    env.ok("lineage", "export", "--format", "openlineage", "--openlineage-url", receiver.url)
    assert receiver.errors == []
    got = [(e["job"]["name"], e["eventType"]) for e in receiver.events]
    assert got == [("train", "START"), ("train", "COMPLETE"), ("eval", "START"), ("eval", "FAIL"), ("serve", "START")]
    complete = receiver.events[1]
    assert [d["name"] for d in complete["inputs"]] == [f"r@{link[0]['bundle']}"]
    assert [d["name"] for d in complete["outputs"]] == [f"r@{out[0]['bundle']}"]
    assert complete["run"]["runId"] == receiver.events[0]["run"]["runId"], "one run, one UUID"
    assert complete["run"]["facets"]["datarun"]["runId"] == done["id"]
    lines = env.ok("lineage", "export").out.splitlines()
    assert [json.loads(line) for line in lines] == receiver.events, "stdout and posts carry the same events"


def test_the_checker_rejects_a_bad_event() -> None:
    with pytest.raises(ValueError, match="badly formed"):
        check_event(
            {
                "eventType": "START",
                "eventTime": "2026-01-01T00:00:00Z",
                "producer": "https://x",
                "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
                "run": {"runId": "not-a-uuid", "facets": {}},
                "job": {"namespace": "n", "name": "j"},
                "inputs": [],
                "outputs": [],
            }
        )
