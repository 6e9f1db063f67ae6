"""The operator's lineage handlers, called directly: a fake Kubernetes API (as in test_handlers.py),
a real local datarun store, real invalidations written by `datarun.lineage` as another host would
(its own index), and a local OpenLineage receiver that checks each event against the client's models.
The real-apiserver run of the same flow belongs to tests/cluster."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import kopf
import pytest

from datarun.catalog import open_index
from datarun.lineage import Graph, bundle_node, invalidate, revalidate
from datarun_operator import handlers
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.feed import LineageFeed
from datarun_operator.lineage_handlers import finished
from datarun_operator.rerun import ANNOTATION_RERUN_OF
from datarun_operator.runrecord import LABEL_RERUN_OF
from tests.lineage.test_openlineage import Receiver, receiver
from tests.operator.builders import UID, body, fuse_result, spec, terminated, with_status
from tests.operator.test_handlers import FakeKube, Store, create, current, deliver, events, kbody, kube, store

__all__ = ["events", "kube", "receiver", "store"]  # fixtures, registered by import


class RerunKube(FakeKube):
    """FakeKube with the two calls reruns make; names are generated as the apiserver does."""

    def list_dataruns(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        key, value = label_selector.split("=", 1)
        return [
            copy.deepcopy(r)
            for (ns, _), r in self.runs.items()
            if ns == namespace and (r["metadata"].get("labels") or {}).get(key) == value
        ]

    def create_datarun(self, raw: dict[str, Any]) -> dict[str, Any]:
        made = copy.deepcopy(raw)
        made["metadata"]["name"] = f"{raw['metadata']['generateName']}{len(self.runs):05d}"
        made["metadata"]["uid"] = f"uid-{len(self.runs)}"
        self.log.append(f"create_datarun {made['metadata']['name']}")
        self.runs[(made["metadata"]["namespace"], made["metadata"]["name"])] = made
        return copy.deepcopy(made)


@pytest.fixture(autouse=True)
def fresh_feed(monkeypatch: pytest.MonkeyPatch) -> LineageFeed:
    feed = LineageFeed(0.0)  # poll every time: the tests move the store between calls
    monkeypatch.setattr(handlers.LINEAGE, "feed", feed)
    return feed


@pytest.fixture
def rkube(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> RerunKube:
    fake = RerunKube()
    monkeypatch.setattr(handlers, "_kube", fake)
    return fake


def _invalidate(store: Store, tmp_path: Path, bundle: str, reason: str) -> None:
    with open_index(f"sqlite://{tmp_path / 'writer.sqlite'}", tmp_path) as index:
        graph = Graph(index)
        graph.sync(store.client.meta)
        invalidate(store.client.meta, graph, bundle_node("in", bundle), reason=reason, who="qa")


def _revalidate(store: Store, tmp_path: Path, bundle: str) -> None:
    with open_index(f"sqlite://{tmp_path / 'writer.sqlite'}", tmp_path) as index:
        graph = Graph(index)
        revalidate(store.client.meta, graph, bundle_node("in", bundle), reason="fine", who="qa")


def _finish(kube: FakeKube, name: str = "job") -> None:
    pod = kube.pods[("team", f"{name}-run")]
    result = fuse_result(
        [{"name": "result", "repo": "out", "path": "/data/out/result", "label": "latest", "bundle": "B" * 27}]
    )
    deliver("MODIFIED", with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, result)}))
    assert current(kube, name)["status"]["phase"] == "Succeeded"


def _check(kube: FakeKube, memo: kopf.Memo, name: str = "job") -> None:
    handlers.LINEAGE.check_invalidated(body=kbody(current(kube, name)), namespace="team", name=name, memo=memo)


def test_an_invalid_input_fails_the_run_at_pin_time(
    kube: FakeKube, store: Store, events: list[Any], tmp_path: Path
) -> None:
    bundle = store.upload("1 2 3")
    _invalidate(store, tmp_path, bundle, "sensor broken")
    with pytest.raises(kopf.PermanentError, match=r"spec.inputs\[0\]"):
        handlers.start(body=create(kube, body()), namespace="team", name="job")
    status = current(kube)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InputInvalid")
    for part in (bundle, "repo `in`", "sensor broken", "datarun revalidate", "spec.inputs[0].allowInvalid"):
        assert part in status["message"], part
    assert events[-1] == ("Warning", "InputInvalid", status["message"])
    assert kube.pods == {}, "an invalid input never reaches a pod"


def test_allow_invalid_starts_the_run_anyway(kube: FakeKube, store: Store, events: list[Any], tmp_path: Path) -> None:
    bundle = store.upload("1 2 3")
    _invalidate(store, tmp_path, bundle, "sensor broken")
    raw = body(spec(inputs=[{"name": "numbers", "repo": "in", "label": "v1", "path": "in/n", "allowInvalid": True}]))
    handlers.start(body=create(kube, raw), namespace="team", name="job")
    assert current(kube)["status"]["pinnedInputs"] == {"numbers": bundle}
    assert ("team", "job-run") in kube.pods


def test_a_finished_run_gets_the_invalidated_condition_and_one_event(
    kube: FakeKube, store: Store, events: list[Any], tmp_path: Path
) -> None:
    bundle = store.upload("1 2 3")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    _finish(kube)
    memo = kopf.Memo()
    before = len(events)
    _check(kube, memo)
    assert len(events) == before and "Invalidated" not in str(current(kube)["status"]["conditions"])
    _invalidate(store, tmp_path, bundle, "sensor broken")
    _check(kube, memo)
    (cond,) = [c for c in current(kube)["status"]["conditions"] if c["type"] == "Invalidated"]
    assert (cond["status"], cond["reason"]) == ("True", "InputInvalidated")
    assert "sensor broken" in cond["message"] and "input" in cond["message"]
    assert events[-1][:2] == ("Warning", "Invalidated") and len(events) == before + 1
    _check(kube, memo)
    _check(kube, kopf.Memo())  # a restarted operator has no memo: same status, no second Event
    assert len(events) == before + 1
    _revalidate(store, tmp_path, bundle)
    _check(kube, memo)
    (cond,) = [c for c in current(kube)["status"]["conditions"] if c["type"] == "Invalidated"]
    assert (cond["status"], cond["reason"]) == ("False", "Revalidated")
    assert events[-1][:2] == ("Normal", "Revalidated")
    assert finished(current(kube)["status"]) and not finished({"phase": "Running"})


def test_rerun_creates_one_new_datarun_that_repins(
    rkube: RerunKube, store: Store, events: list[Any], tmp_path: Path
) -> None:
    bad = store.upload("1 2 3")
    raw = body(spec(onInputInvalidated="rerun"))
    handlers.start(body=create(rkube, raw), namespace="team", name="job")
    _finish(rkube)
    _invalidate(store, tmp_path, bad, "sensor broken")
    good = store.upload("4 5 6")  # the label moves on to a valid bundle
    _check(rkube, kopf.Memo())
    _check(rkube, kopf.Memo())  # a restart: the label query finds the rerun, none is added
    reruns = [r for (_, n), r in rkube.runs.items() if n != "job"]
    assert len(reruns) == 1 and [e[1] for e in events].count("Rerun") == 1
    new = reruns[0]
    assert new["metadata"]["labels"][LABEL_RERUN_OF] == UID
    assert new["metadata"]["annotations"][ANNOTATION_RERUN_OF] == "job"
    assert new["metadata"]["name"].startswith("job-rerun-") and "status" not in new
    assert new["spec"] == raw["spec"]
    name = new["metadata"]["name"]
    handlers.start(body=kbody(copy.deepcopy(new)), namespace="team", name=name)
    assert current(rkube, name)["status"]["pinnedInputs"] == {"numbers": good}


def test_ignore_is_the_default_and_makes_no_rerun(
    rkube: RerunKube, store: Store, events: list[Any], tmp_path: Path
) -> None:
    bad = store.upload("1 2 3")
    handlers.start(body=create(rkube, body()), namespace="team", name="job")
    _finish(rkube)
    _invalidate(store, tmp_path, bad, "sensor broken")
    _check(rkube, kopf.Memo())
    assert list(rkube.runs) == [("team", "job")] and "Rerun" not in [e[1] for e in events]


def test_openlineage_events_are_posted_as_the_run_ends(
    kube: FakeKube, store: Store, events: list[Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "SETTINGS", replace(handlers.SETTINGS, openlineage_url=receiver.url))
    bundle = store.upload("1 2 3")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    assert receiver.events == []
    _finish(kube)
    assert receiver.errors == []
    assert [e["eventType"] for e in receiver.events] == ["START", "COMPLETE"]
    record = current(kube)["status"]["runRecord"]
    assert {e["run"]["facets"]["datarun"]["runId"] for e in receiver.events} == {record}
    assert receiver.events[0]["inputs"][0]["name"] == f"in@{bundle}"


def test_an_openlineage_consumer_that_is_down_costs_a_warning_not_the_run(
    kube: FakeKube, store: Store, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:9/api/v1/lineage"  # the discard port: nothing listens
    monkeypatch.setattr(handlers, "SETTINGS", replace(handlers.SETTINGS, openlineage_url=url))
    store.upload("1 2 3")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    _finish(kube)
    failed = [e for e in events if e[1] == "OpenLineageFailed"]
    assert len(failed) == 1 and failed[0][0] == "Warning" and url in failed[0][2]
    assert events[-1][1] == "Succeeded", "the run still ends Succeeded (_finish checked the phase)"
