"""The kopf handlers, called directly: a fake Kubernetes API, a real local datarun store.

These check what the handlers do in order (pins recorded before the pod exists; a second create
adopts instead of duplicating) and what they send; the decisions themselves are tested in
test_reconcile.py. The real-apiserver runs belong to tests/cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import kopf
import pytest

from datarun.repo import Client
from datarun.store import LocalStore
from datarun_operator import handlers
from datarun_operator.builder import FUSE, MAIN, pod_name
from datarun_operator.settings import Settings, StoreSettings
from tests.operator.builders import body, fuse_result, spec, terminated, with_status


class FakeKube:
    """The Kube facade over dicts; ``log`` records every call in order."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[str] = []

    def create_pod(self, pod: dict[str, Any]) -> bool:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.log.append(f"create_pod {key[1]}")
        if key in self.pods:
            return False
        self.pods[key] = copy.deepcopy(pod)
        return True

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.pods.get((namespace, name)))

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.log.append(f"delete_pod {name}")
        return self.pods.pop((namespace, name), None) is not None

    def get_datarun(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.runs.get((namespace, name)))

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        self.log.append(f"patch_status {sorted(patch)}")
        run = self.runs.get((namespace, name))
        if run is None:
            return False
        run["status"] = {**run.get("status", {}), **copy.deepcopy(patch)}
        return True


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root / 'store'}"
        self.client = Client(LocalStore(root / "store"), cache_dir=root / "cache")
        self.client.create_repo("in")
        self.client.create_repo("out")

    def upload(self, text: str, label: str = "v1") -> str:
        src = self.root / f"src-{text}"
        src.mkdir()
        (src / "numbers.txt").write_text(text)
        return self.client.upload("in", src, text, label=label).bundle.id


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("DATARUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATARUN_CONFIG", str(tmp_path / "home" / "config.yaml"))
    monkeypatch.setenv("DATARUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DATARUN_STORE", raising=False)
    s = Store(tmp_path)
    yield s
    s.client.close()


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch, settings: Settings, store: Store) -> FakeKube:
    fake = FakeKube()
    monkeypatch.setattr(handlers, "_kube", fake)
    monkeypatch.setattr(handlers, "SETTINGS", replace(settings, store=StoreSettings(url=store.url)))
    return fake


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    def record(obj: Any, *, type: str, reason: str, message: str = "", **_: Any) -> None:
        seen.append((type, reason, message))

    monkeypatch.setattr(kopf, "event", record)
    return seen


def create(kube: FakeKube, raw: dict[str, Any]) -> kopf.Body:
    """Store the DataRun in the fake API and hand it to the create handler as kopf would."""
    kube.runs[("team", raw["metadata"]["name"])] = copy.deepcopy(raw)
    return kbody(copy.deepcopy(raw))


def current(kube: FakeKube, name: str = "job") -> dict[str, Any]:
    out: dict[str, Any] = kube.runs[("team", name)]
    return out


def kbody(raw: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, raw))


def deliver(kind: str, pod: dict[str, Any]) -> None:
    """A pod watch event, as kopf hands it to the handler."""
    event = cast(kopf.RawEvent, {"type": kind, "object": pod})
    handlers.follow_pod(event=event, body=kbody(pod), namespace="team", labels=pod["metadata"]["labels"])


def fuse_args(pod: dict[str, Any]) -> list[str]:
    fuse = next(c for c in pod["spec"]["containers"] if c["name"] == FUSE)
    command: list[str] = fuse["command"]
    return [command[i + 1] for i, word in enumerate(command) if word == "-d"]


def test_create_pins_records_then_creates_the_pod(kube: FakeKube, store: Store, events: list[Any]) -> None:
    bundle = store.upload("1 2 3")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    assert kube.log[0].startswith("patch_status") and kube.log[1] == "create_pod job-run", "pins before the pod"
    status = current(kube)["status"]
    assert status["pinnedInputs"] == {"numbers": bundle}
    assert status["phase"] == "Pending" and status["podName"] == "job-run"
    pod = kube.pods[("team", "job-run")]
    assert f"--bundle={bundle}" in fuse_args(pod)[1]
    assert [e[1] for e in events] == ["InputsPinned", "PodCreated"]


def test_a_second_create_adopts_the_pod_and_keeps_the_pins(kube: FakeKube, store: Store, events: list[Any]) -> None:
    first = store.upload("1 2 3")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    store.upload("4 5 6")  # the label moves while the operator is down
    again = kbody(copy.deepcopy(current(kube)))
    handlers.start(body=again, namespace="team", name="job")  # kopf retries the handler after a restart
    assert len(kube.pods) == 1
    assert current(kube)["status"]["pinnedInputs"] == {"numbers": first}
    assert f"--bundle={first}" in fuse_args(kube.pods[("team", "job-run")])[1]
    assert events[-1][1] == "PodAdopted"


def test_a_pod_of_another_owner_is_not_adopted(kube: FakeKube, store: Store, events: list[Any]) -> None:
    store.upload("1")
    kube.pods[("team", "job-run")] = {
        "metadata": {"name": "job-run", "ownerReferences": [{"uid": "old", "controller": True}]}
    }
    with pytest.raises(kopf.TemporaryError, match="belongs to something else"):
        handlers.start(body=create(kube, body()), namespace="team", name="job")


def test_a_bad_spec_fails_permanently_with_the_field(kube: FakeKube, events: list[Any]) -> None:
    raw = body(spec(inputs=[{"name": "numbers", "repo": "in", "label": "v1", "bundle": "x" * 27, "path": "in"}]))
    with pytest.raises(kopf.PermanentError, match=r"spec.inputs\[0\].label"):
        handlers.start(body=create(kube, raw), namespace="team", name="job")
    status = current(kube)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert status["message"].startswith("spec.inputs[0].label: ")
    assert events == [("Warning", "InvalidSpec", status["message"])]
    assert kube.pods == {}


def test_an_unknown_label_fails_permanently_with_the_field(kube: FakeKube, events: list[Any]) -> None:
    with pytest.raises(kopf.PermanentError, match=r"spec.inputs\[0\].label"):
        handlers.start(body=create(kube, body()), namespace="team", name="job")
    status = current(kube)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "PinFailed")
    assert "label `v1` not found" in status["message"]
    assert kube.pods == {}


def test_an_unsupported_store_url_names_the_field(kube: FakeKube, events: list[Any]) -> None:
    raw = body(spec(store={"url": "s3://bucket"}))
    with pytest.raises(kopf.PermanentError, match=r"spec.store.url"):
        handlers.start(body=create(kube, raw), namespace="team", name="job")


def test_a_finished_run_is_not_restarted(kube: FakeKube, events: list[Any]) -> None:
    handlers.start(body=create(kube, body(status={"phase": "Failed"})), namespace="team", name="job")
    assert kube.log == [] and events == []


def test_pod_events_become_status(kube: FakeKube, store: Store, events: list[Any]) -> None:
    store.upload("1")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    pod = kube.pods[("team", "job-run")]
    running = with_status(pod, "Running", {MAIN: {"running": {}}, FUSE: {"running": {}}})
    deliver("MODIFIED", running)
    assert current(kube)["status"]["phase"] == "Running"
    result = fuse_result(
        [
            {
                "name": "latest",
                "repo": "out",
                "path": "/data/out/result",
                "label": "latest",
                "bundle": "B" * 27,
                "uploaded": True,
            }
        ]
    )
    done = with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, result)})
    deliver("MODIFIED", done)
    status = current(kube)["status"]
    assert status["phase"] == "Succeeded"
    assert status["outputs"][0]["bundle"] == "B" * 27
    assert [e[1] for e in events][-2:] == ["Started", "Succeeded"]
    deliver("DELETED", done)
    assert current(kube)["status"]["phase"] == "Succeeded", "a finished run outlives its pod"


def test_a_pod_deleted_mid_run_fails_the_run(kube: FakeKube, store: Store, events: list[Any]) -> None:
    store.upload("1")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    pod = kube.pods.pop(("team", "job-run"))
    deliver("DELETED", pod)
    assert (current(kube)["status"]["phase"], current(kube)["status"]["reason"]) == ("Failed", "PodDeleted")


def test_the_resync_timer_finds_what_events_missed(kube: FakeKube, store: Store, events: list[Any]) -> None:
    store.upload("1")
    handlers.start(body=create(kube, body()), namespace="team", name="job")
    key = ("team", "job-run")
    kube.pods[key] = with_status(kube.pods[key], "Running", {MAIN: {"running": {}}})
    status = current(kube)["status"]
    assert handlers._unfinished(status)
    handlers.resync(namespace="team", name="job", status=status)
    assert current(kube)["status"]["phase"] == "Running"
    assert not handlers._unfinished({"phase": "Succeeded", "podName": "job-run"})
    assert not handlers._unfinished({})


def test_pods_of_an_older_datarun_are_ignored(kube: FakeKube, events: list[Any]) -> None:
    kube.runs[("team", "job")] = body(status={"phase": "Running", "podName": "job-run"})
    stray = {
        "metadata": {"name": "job-run", "ownerReferences": [{"uid": "old", "controller": True}]},
        "status": {"phase": "Failed"},
    }
    handlers.sync_run("team", "job", stray)
    assert kube.log == []


def test_delete_removes_the_pod(kube: FakeKube) -> None:
    kube.pods[("team", "job-run")] = {"metadata": {"name": "job-run"}}
    handlers.stop(namespace="team", name="job")
    assert kube.pods == {} and kube.log == [f"delete_pod {pod_name('job')}"]
    handlers.stop(namespace="team", name="job")  # already gone: fine


def test_spec_changes_after_the_start_get_a_warning(events: list[Any]) -> None:
    started = kbody(body(status={"phase": "Running"}))
    handlers.spec_change(body=started, old=spec(), new=spec(image="other:2"))
    assert [(e[0], e[1]) for e in events] == [("Warning", "SpecChangeRefused")]


def test_the_webhook_handler_answers_422_with_the_field() -> None:
    raw = kbody(body(spec(outputs=[{"name": "numbers", "repo": "out", "path": "o"}])))
    with pytest.raises(kopf.AdmissionError) as caught:
        handlers.validate(body=raw, operation="CREATE", old=None)
    assert caught.value.code == 422
    assert str(caught.value).startswith("spec.outputs[0].name: duplicate name `numbers`")
    handlers.validate(body=kbody(body()), operation="CREATE", old=None)


def test_startup_configures_kopf(kube: FakeKube) -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    assert settings.persistence.finalizer == "datarun.io/finalizer"
    assert settings.peering.standalone and settings.scanning.disabled
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.admission.server is None, "no webhook unless enabled"
