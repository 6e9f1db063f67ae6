"""The operator's run record: written at pin time (Running, inputs pinned), finished at the end
(phase, exit code, outputs), named in the status and handed to the sidecars; read back here."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from datarun.errors import StoreError
from datarun.repo import Client, connect
from datarun_operator import handlers, runrecord
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.models import DataRun
from tests.operator.builders import body, fuse_result, spec, terminated, with_status
from tests.operator.test_handlers import FakeKube, Store, create, current, deliver, events, kbody, kube, store

__all__ = ["events", "kube", "store"]  # fixtures, registered by import

OUTPUT = {
    "name": "latest",
    "repo": "out",
    "path": "/data/out/result",
    "label": "latest",
    "bundle": "B" * 27,
    "uploaded": True,
}


def _body() -> dict[str, Any]:
    raw = body(spec(params={"lr": 0.01, "model": {"depth": 3}}, args=["echo", "hi"]))
    raw["metadata"]["creationTimestamp"] = "2026-12-03T10:00:00Z"
    return raw


def test_pinning_writes_a_running_record_with_the_pinned_inputs(kube: FakeKube, store: Store, events: Any) -> None:
    bundle = store.upload("1 2 3")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    record = store.client.runs.get(run_id)
    assert (record.phase, record.title, record.version) == ("Running", "team/job", 1)
    assert [(i.name, i.repo, i.bundle) for i in record.inputs] == [("numbers", "in", bundle)]
    assert record.params == {"lr": 0.01, "model": {"depth": 3}}
    assert record.command == ("sh", "-c", "echo", "hi") and record.image == "busybox:1.36"
    assert record.annotations["datarun.io/uid"] == current(kube)["metadata"]["uid"]
    fuse = next(c for c in kube.pods[("team", "job-run")]["spec"]["containers"] if c["name"] == FUSE)
    assert {"name": "DATARUN_RUN_RECORD", "value": run_id} in fuse["env"], "the sidecars add to this record"
    # A retried create (kopf after an operator restart) finds the same record: one run, one version.
    handlers.start(body=kbody(copy.deepcopy(current(kube))), namespace="team", name="job")
    assert current(kube)["status"]["runRecord"] == run_id
    assert len(store.client.runs.history(run_id)) == 1
    assert runrecord.record_id(DataRun.from_body(_body())) == run_id


def test_the_end_of_the_run_finishes_the_record(kube: FakeKube, store: Store, events: Any) -> None:
    store.upload("1")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    pod = kube.pods[("team", "job-run")]
    deliver("MODIFIED", with_status(pod, "Running", {MAIN: {"running": {}}, FUSE: {"running": {}}}))
    assert store.client.runs.get(run_id).version == 1, "nothing to record until the end"
    done = with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, fuse_result([OUTPUT]))})
    deliver("MODIFIED", done)
    record = store.client.runs.get(run_id)
    assert (record.phase, record.exit_code, record.version) == ("Succeeded", 0, 2)
    assert [(o.name, o.repo, o.bundle) for o in record.outputs] == [("result", "out", "B" * 27)]
    assert record.end is not None
    deliver("MODIFIED", done)  # a replayed event changes nothing
    assert store.client.runs.get(run_id).version == 2


def test_a_failed_app_fails_the_record_with_its_exit_code(kube: FakeKube, store: Store, events: Any) -> None:
    store.upload("1")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    pod = kube.pods[("team", "job-run")]
    failed = with_status(pod, "Failed", {MAIN: terminated(3), FUSE: terminated(0, fuse_result([], app_code=3))})
    deliver("MODIFIED", failed)
    record = store.client.runs.get(run_id)
    assert (record.phase, record.exit_code, record.outputs) == ("Failed", 3, ())


def test_a_store_failure_at_the_end_keeps_the_run_unfinished_for_the_resync(
    kube: FakeKube, store: Store, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store.upload("1")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    pod = kube.pods[("team", "job-run")]
    done = with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, fuse_result([OUTPUT]))})
    real_connect = connect

    def broken(url: str | None = None, **kw: Any) -> Client:
        client = real_connect(url, **kw)

        def fail(*_: Any, **__: Any) -> Any:
            raise StoreError("store `x`: unreachable")

        client.meta.put_if_absent = fail  # type: ignore[method-assign]
        return client

    monkeypatch.setattr(handlers, "connect", broken)
    deliver("MODIFIED", done)
    assert current(kube)["status"]["phase"] != "Succeeded", "the status waits for the record"
    assert events[-1][:2] == ("Warning", "RunRecordFailed")
    monkeypatch.setattr(handlers, "connect", real_connect)
    kube.pods[("team", "job-run")] = done  # what the timer's get_pod finds
    handlers.resync(namespace="team", name="job", status=current(kube)["status"])
    assert current(kube)["status"]["phase"] == "Succeeded"
    assert store.client.runs.get(run_id).phase == "Succeeded"


def test_a_configured_index_sees_the_run_at_pin_time_and_at_the_end(
    kube: FakeKube, store: Store, events: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from datarun.catalog import open_index
    from datarun_operator.settings import IndexSettings

    url = f"sqlite://{tmp_path / 'team-index.sqlite'}"
    monkeypatch.setattr(handlers, "SETTINGS", replace(handlers.SETTINGS, index=IndexSettings(url=url)))
    assert url not in repr(handlers.SETTINGS), "the index URL may carry a password: never in the settings' repr"
    store.upload("1")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    with open_index(url, tmp_path) as index:  # no sync here: the operator's writes must be in it already
        assert [(r["id"], r["phase"]) for r in index.query("run.params.model.depth = 3")] == [(run_id, "Running")]
    pod = kube.pods[("team", "job-run")]
    deliver("MODIFIED", with_status(pod, "Failed", {MAIN: terminated(3), FUSE: terminated(0, fuse_result([]))}))
    with open_index(url, tmp_path) as index:
        found = index.query("run.phase = 'Failed' AND run.version = 2")
        assert [r["id"] for r in found] == [run_id]


def test_a_broken_index_does_not_fail_the_run(
    kube: FakeKube, store: Store, events: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from datarun_operator.settings import IndexSettings

    bad = tmp_path / "not-a-db"
    bad.write_text("this is not SQLite")
    monkeypatch.setattr(handlers, "SETTINGS", replace(handlers.SETTINGS, index=IndexSettings(url=f"sqlite://{bad}")))
    store.upload("1")
    handlers.start(body=create(kube, _body()), namespace="team", name="job")
    run_id = current(kube)["status"]["runRecord"]
    assert store.client.runs.get(run_id).phase == "Running"
