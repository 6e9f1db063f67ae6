"""The `rerun` invalidation action on the operator's side, called directly: the fake Kubernetes API of
test_lineage_handlers.py, a real local store, real invalidations (with their actions) written by
`datarun.lineage` as the CLI on another host would. The real-apiserver run is tests/cluster."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from datarun.catalog import open_index
from datarun.cli.main import main
from datarun.lineage import Graph, bundle_node, invalidate
from datarun.lineage.actions import add_action, reruns
from datarun.runs import Run
from datarun_operator import handlers, rerun, runrecord
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.lineage_handlers import Lineage
from datarun_operator.runrecord import ANNOTATION_RERUN_OF_RUN, LABEL_RERUN_OF, LABEL_RERUN_OF_RUN
from tests.operator.builders import UID, body, fuse_result, spec, terminated, with_status
from tests.operator.test_handlers import FakeKube, Store, create, current, deliver, events, kbody, kube, store
from tests.operator.test_lineage_handlers import RerunKube, fresh_feed, rkube

__all__ = ["events", "fresh_feed", "kube", "rkube", "store"]  # fixtures, registered by import

SECRET = "hunter2-never-in-a-record"


def _run_job(kube: FakeKube, store: Store, raw: dict[str, Any] | None = None) -> str:
    """A finished DataRun `job` that read in@v1 and wrote a bundle of `out` (uploaded here, as its
    fuse sidecar would have); returns its run record id."""
    handlers.start(body=create(kube, raw or body()), namespace="team", name="job")
    src = store.root / "result"
    src.mkdir(exist_ok=True)
    (src / "sum.txt").write_text("6")
    made = store.client.upload("out", src, "result").bundle.id
    out = {"name": "result", "repo": "out", "path": "/data/out/result", "label": "latest"}
    result = fuse_result([out | {"bundle": made, "uploaded": True}])
    pod = kube.pods[("team", "job-run")]
    deliver("MODIFIED", with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, result)}))
    status = current(kube)["status"]
    assert status["phase"] == "Succeeded" and status["outputs"][0]["bundle"] == made
    return str(status["runRecord"])


def _invalidate(store: Store, tmp_path: Path, bundle: str, reason: str) -> dict[str, Any]:
    with open_index(f"sqlite://{tmp_path / 'writer.sqlite'}", tmp_path) as index:
        graph = Graph(index)
        graph.sync(store.client.meta)
        done = invalidate(
            store.client.meta, graph, bundle_node("in", bundle), reason=reason, who="qa", client=store.client
        )
    return dict(done.event)


def _restarted() -> Lineage:
    """A new operator process: no memory of what the last one settled."""
    return Lineage(lambda: handlers.SETTINGS, handlers.kube, handlers._post)


def _reruns_of(kube: FakeKube) -> list[dict[str, Any]]:
    return [r for (_, n), r in kube.runs.items() if n != "job"]


def test_the_recorded_resource_keeps_the_spec_and_the_users_metadata_and_no_secret_value() -> None:
    raw = body(
        spec(
            env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
            store={"url": "az://acct/data", "credentialsSecret": "datarun-store"},
        )
    )
    raw["metadata"] |= {
        "labels": {"team": "vision", LABEL_RERUN_OF: "older-uid"},
        "annotations": {
            "owner": "ana",
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"stringData": {"token": SECRET}}),
            "datarun.io/last-handled-configuration": json.dumps({"spec": {"password": SECRET}}),
            "kopf.zalando.org/start": SECRET,
        },
        "managedFields": [{"manager": "kubectl"}],
        "resourceVersion": "17",
    }
    raw["status"] = {"phase": "Succeeded", "message": SECRET}
    kept = runrecord.recorded_resource(raw)
    assert SECRET not in json.dumps(kept)
    assert kept["metadata"] == {
        "name": "job",
        "namespace": "team",
        "labels": {"team": "vision", LABEL_RERUN_OF: "older-uid"},
        "annotations": {"owner": "ana"},
    }
    assert kept["spec"] == raw["spec"], "the Secrets stay references: secretKeyRef and credentialsSecret"
    assert kept["spec"]["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "api", "key": "token"}
    raw["spec"]["image"] = "changed"
    assert kept["spec"]["image"] == "busybox:1.36", "a copy, not a view of the body"


def test_the_rerun_body_is_built_from_the_recorded_resource_with_links_and_no_status() -> None:
    resource = runrecord.recorded_resource(body(name="x" * 63) | {"status": {"phase": "Failed"}})
    resource["metadata"]["labels"] = {"team": "a", LABEL_RERUN_OF: "older", LABEL_RERUN_OF_RUN: "older-run"}
    run_id = "2" * 27
    made = rerun.rerun_body(resource, 63, uid=UID, run_id=run_id)
    meta = made["metadata"]
    assert meta["generateName"].startswith("x") and meta["generateName"].endswith(rerun.RERUN_SUFFIX)
    assert len(meta["generateName"]) + 5 <= 63 and "name" not in meta
    assert meta["labels"] == {"team": "a", LABEL_RERUN_OF: UID, LABEL_RERUN_OF_RUN: run_id}
    assert meta["annotations"] == {rerun.ANNOTATION_RERUN_OF: "x" * 63, ANNOTATION_RERUN_OF_RUN: run_id}
    assert made["spec"] == resource["spec"] and "status" not in made
    assert runrecord.rerun_of(made) == run_id and runrecord.rerun_of(body()) is None


def test_an_older_record_without_a_resource_falls_back_to_the_live_datarun_of_the_same_uid() -> None:
    record = Run(
        id="3" * 27,
        start="2026-01-01T00:00:00.000000Z",
        annotations={"datarun.io/namespace": "team", "datarun.io/name": "job", "datarun.io/uid": UID},
    )
    assert rerun.source_of(record, body()) == (body(), "")
    source, why = rerun.source_of(record, None)
    assert source is None and "no recorded resource" in why and "team/job is gone" in why
    other = body()
    other["metadata"]["uid"] = "a-newer-object"
    assert rerun.source_of(record, other)[0] is None, "a new DataRun that reuses the name is another run"
    assert "not made by a DataRun" in rerun.source_of(Run(id="3" * 27, start=record.start), None)[1]
    with pytest.raises(ValueError, match="outcome"):
        rerun.outcome_doc({"event": "e", "action": "a"}, record.id, "maybe", "", "t")


def test_a_pending_rerun_recreates_the_run_from_its_record_once_even_after_a_restart(
    rkube: RerunKube, store: Store, events: list[Any], tmp_path: Path
) -> None:
    bad = store.upload("1 2 3")
    raw = body()
    raw["metadata"]["labels"] = {"team": "vision"}
    run_id = _run_job(rkube, store, raw)
    record = store.client.runs.get(run_id)
    assert record.resource is not None and record.resource["spec"] == raw["spec"], "written at pin time"
    action = add_action(store.client, on="repo=out", do="rerun")
    good = store.upload("4 5 6")  # the label moves on to a valid bundle
    event = _invalidate(store, tmp_path, bad, "sensor broken")
    del rkube.runs[("team", "job")]  # the record is enough: the old object may be gone
    (done,) = handlers.LINEAGE.settle_reruns(store.url)
    assert (done["outcome"], done["run"], done["event"], done["action"]) == (
        "created",
        run_id,
        event["id"],
        action["id"],
    )
    (new,) = _reruns_of(rkube)
    meta = new["metadata"]
    assert done["name"] == meta["name"] and meta["name"].startswith("job-rerun-")
    assert meta["labels"] == {"team": "vision", LABEL_RERUN_OF: UID, LABEL_RERUN_OF_RUN: run_id}
    assert meta["annotations"][ANNOTATION_RERUN_OF_RUN] == run_id and new["spec"] == raw["spec"]
    assert "recorded spec" in done["detail"]
    assert handlers.LINEAGE.settle_reruns(store.url) == [] and _restarted().settle_reruns(store.url) == []
    # An operator killed after the create and before the outcome: the label query finds the rerun.
    store.client.meta.delete(rerun.outcome_doc(done, run_id, "created", "", "")[0])
    (again,) = _restarted().settle_reruns(store.url)
    assert again["outcome"] == "created" and "re-does it already" in again["detail"]
    assert len(_reruns_of(rkube)) == 1, "never a second DataRun"
    # The rerun pins afresh, and its record says which run it re-does.
    handlers.start(body=kbody(copy.deepcopy(new)), namespace="team", name=meta["name"])
    assert current(rkube, meta["name"])["status"]["pinnedInputs"] == {"numbers": good}
    new_record = store.client.runs.get(current(rkube, meta["name"])["status"]["runRecord"])
    assert new_record.rerun_of == run_id and new_record.id == done["new_run"]
    assert [r["outcome"] for r in reruns(store.client, {run_id})] == ["created"]


class GoneNamespaceKube(RerunKube):
    def create_datarun(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.log.append("create_datarun (namespace gone)")
        raise ApiException(status=404, reason="Not Found")


def test_a_gone_namespace_is_refused_once_with_the_reason(
    rkube: RerunKube,
    store: Store,
    events: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = store.upload("1 2 3")
    run_id = _run_job(rkube, store)
    add_action(store.client, on="repo=out", do="rerun")
    _invalidate(store, tmp_path, bad, "sensor broken")
    gone = GoneNamespaceKube()
    monkeypatch.setattr(handlers, "_kube", gone)
    (done,) = handlers.LINEAGE.settle_reruns(store.url)
    assert done["outcome"] == "refused" and "namespace `team` is gone (404)" in done["detail"]
    assert done["new_run"] is None and done["name"] == ""
    assert _restarted().settle_reruns(store.url) == [] and gone.log.count("create_datarun (namespace gone)") == 1
    capsys.readouterr()
    assert main(["--store", store.url, "lineage", "descendants", "--run", run_id]) == 0
    out = capsys.readouterr().out
    assert f"RERUN: {run_id} -> - , refused" in out and "(404)" in out
    assert main(["--store", store.url, "lineage", "descendants", "--run", run_id, "--json"]) == 0
    assert [r["outcome"] for r in json.loads(capsys.readouterr().out)["reruns"]] == ["refused"]


def test_an_apiserver_that_does_not_answer_leaves_the_rerun_pending(
    rkube: RerunKube, store: Store, events: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = store.upload("1 2 3")
    _run_job(rkube, store)
    add_action(store.client, on="repo=out", do="rerun")
    _invalidate(store, tmp_path, bad, "sensor broken")

    class Down(RerunKube):
        def create_datarun(self, raw: dict[str, Any]) -> dict[str, Any]:
            raise ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(handlers, "_kube", Down())
    assert handlers.LINEAGE.settle_reruns(store.url) == [] and reruns(store.client) == []
    monkeypatch.setattr(handlers, "_kube", rkube)
    (done,) = handlers.LINEAGE.settle_reruns(store.url)
    assert done["outcome"] == "created" and len(_reruns_of(rkube)) == 1


def test_an_older_record_reruns_from_the_live_datarun_and_a_refused_body_is_failed(
    rkube: RerunKube, store: Store, events: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = store.upload("1 2 3")
    run_id = _run_job(rkube, store)
    # A record written before resources were kept: a version without one.
    store.client.runs.update(run_id, lambda r: replace(r, resource=None))
    add_action(store.client, on="repo=out", do="rerun")
    _invalidate(store, tmp_path, bad, "sensor broken")

    class Refusing(RerunKube):
        def create_datarun(self, raw: dict[str, Any]) -> dict[str, Any]:
            raise ApiException(status=422, reason="Unprocessable Entity")

    refusing = Refusing()
    refusing.runs = rkube.runs
    monkeypatch.setattr(handlers, "_kube", refusing)
    (failed,) = handlers.LINEAGE.settle_reruns(store.url)
    assert failed["outcome"] == "failed" and "HTTP 422" in failed["detail"] and "team/job" in failed["detail"]
    # The next invalidation is another event: with a working apiserver, the live DataRun is the source.
    monkeypatch.setattr(handlers, "_kube", rkube)
    _invalidate(store, tmp_path, store.upload("7 8 9", label="v1"), "again")  # not read by job: nothing new
    assert handlers.LINEAGE.settle_reruns(store.url) == []
    _invalidate(store, tmp_path, bad, "sensor broken, twice")
    (done,) = handlers.LINEAGE.settle_reruns(store.url)
    assert done["outcome"] == "created" and "from the live spec" in done["detail"]
    (new,) = _reruns_of(rkube)
    assert new["spec"] == current(rkube)["spec"] and new["metadata"]["labels"][LABEL_RERUN_OF_RUN] == run_id
