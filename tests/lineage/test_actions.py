"""Invalidation actions on a real local store: move-label, and a webhook against a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from datarun.errors import UsageError
from datarun.lineage import Graph, invalidate
from datarun.lineage.actions import add_action, executions, pending_reruns, rerun_outcome_key, reruns
from tests.lineage.conftest import World


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first: dict[str, int] = {"/flaky": 2, "/down": 1_000}
        self.calls: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.calls[self.path] = receiver.calls.get(self.path, 0) + 1
                if receiver.calls[self.path] <= receiver.fail_first.get(self.path, 0):
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.bodies.append({"path": self.path, **body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_webhooks_retry_fail_without_stopping_the_cascade_and_are_recorded(
    graph: Graph, world: World, receiver: Receiver
) -> None:
    c = world.client
    ok = add_action(c, on="repo=models", do="webhook", url=f"{receiver.url}/ok")
    flaky = add_action(c, on="repo=models", do="webhook", url=f"{receiver.url}/flaky", retries=3)
    down = add_action(c, on="repo=models", do="webhook", url=f"{receiver.url}/down", retries=1)
    on_record = add_action(c, on=f"record={world.x.id}", do="webhook", url=f"{receiver.url}/rec")
    elsewhere = add_action(c, on="repo=raw", do="webhook", url=f"{receiver.url}/raw")
    done = invalidate(c.meta, graph, world.f, reason="bad features", who="t", client=c)
    by_id = {o.action: o for o in done.actions}
    assert set(by_id) == {ok["id"], flaky["id"], down["id"], on_record["id"]}, "raw was not reached"
    assert by_id[ok["id"]].ok and by_id[flaky["id"]].ok and by_id[flaky["id"]].attempts == 3
    assert not by_id[down["id"]].ok and by_id[down["id"]].attempts == 2 and "503" in by_id[down["id"]].detail
    assert receiver.calls.get("/raw") is None and elsewhere["id"] not in by_id
    got = {b["path"]: b for b in receiver.bodies}
    assert got["/ok"]["nodes"] == [world.m.key] and got["/ok"]["event"]["reason"] == "bad features"
    assert got["/rec"]["nodes"] == [world.x.key]
    # The failure did not stop the cascade: every node is marked and the cascade is done.
    assert set(graph.invalid_reasons([world.f.key, world.m.key, world.x.key])) == {
        world.f.key,
        world.m.key,
        world.x.key,
    }
    assert list(c.meta.list(f"lineage/done/{done.event['id']}"))
    recorded = {e["action"]: e for e in executions(c, done.event["id"])}
    assert set(recorded) == set(by_id)
    assert recorded[down["id"]]["ok"] is False and recorded[ok["id"]]["ok"] is True


def test_move_label_goes_back_to_the_newest_valid_bundle(graph: Graph, world: World) -> None:
    c = world.client
    add_action(c, on="repo=raw", do="move-label")
    c.set_label("raw", "latest", world.a2.id)  # a2 is newer than a and lone is newer still
    c.set_label("raw", "pinned", world.lone.id)
    done = invalidate(c.meta, graph, world.a2, reason="bad", who="t", client=c)
    assert [o.ok for o in done.actions] == [True]
    # lone is the newest valid bundle of raw; `pinned` pointed at a valid one and stays.
    assert c.get_label("raw", "latest").bundle == world.lone.id
    assert c.get_label("raw", "pinned").bundle == world.lone.id
    assert "latest" in done.actions[0].detail


def test_bad_actions_are_refused(world: World) -> None:
    c = world.client
    with pytest.raises(UsageError, match="repo=NAME"):
        add_action(c, on="models", do="webhook", url="http://x")
    with pytest.raises(UsageError, match="--url"):
        add_action(c, on="repo=models", do="webhook", url="file:///etc/passwd")
    with pytest.raises(UsageError, match="move-label, webhook, rerun"):
        add_action(c, on="repo=models", do="restart")
    assert not list(c.meta.list("lineage/actions/"))


def test_rerun_is_recorded_pending_for_the_operator_with_the_runs_that_made_the_nodes(
    graph: Graph, world: World, receiver: Receiver
) -> None:
    c = world.client
    on_repo = add_action(c, on="repo=feat", do="rerun")
    on_record = add_action(c, on=f"record={world.x.id}", do="rerun")
    nothing = add_action(c, on="repo=models", do="rerun")  # models@m was uploaded by hand: no run made it
    down = add_action(c, on="repo=feat", do="webhook", url=f"{receiver.url}/down", retries=0)
    done = invalidate(c.meta, graph, world.a, reason="lens cracked", who="t", client=c)
    by_id = {o.action: o for o in done.actions}
    assert set(by_id) == {on_repo["id"], on_record["id"], nothing["id"], down["id"]}
    assert not by_id[down["id"]].ok, "a failing action beside the rerun ones..."
    assert list(c.meta.list(f"lineage/done/{done.event['id']}")), "...does not stop the cascade"
    recorded = {e["action"]: e for e in executions(c, done.event["id"])}
    assert recorded[on_repo["id"]]["pending"] == "operator" and recorded[on_repo["id"]]["runs"] == [world.run.id]
    assert world.run.id in by_id[on_repo["id"]].detail and by_id[on_repo["id"]].ok
    # The record's parent models@m was not made by a run; the run two steps up made feat@f, which m read.
    assert recorded[on_record["id"]]["runs"] == []
    assert recorded[nothing["id"]]["pending"] is None and "nothing to rerun" in recorded[nothing["id"]]["detail"]
    pending = pending_reruns(c)
    assert [(p["event"], p["action"]) for p in pending] == [(done.event["id"], on_repo["id"])]
    assert pending_reruns(c, {pending[0]["key"]}) == [], "a poller skips what it settled, unread"
    assert reruns(c) == [], "the operator has not settled it yet"
    key = rerun_outcome_key(world.run.id, done.event["id"], on_repo["id"])
    assert key.startswith(f"lineage/reruns/{world.run.id}/")
    # Another invalidation is another event, with its own pending execution: the operator's label
    # query (tests/operator) is what keeps the run from being re-created twice.
    again = invalidate(c.meta, graph, world.f, reason="features off", who="t", client=c)
    assert {(p["event"], p["action"]) for p in pending_reruns(c)} == {
        (done.event["id"], on_repo["id"]),
        (again.event["id"], on_repo["id"]),
    }
