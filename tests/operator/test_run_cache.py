"""The run cache in the operator: the pure key of a DataRun, and the handlers on a real local
store with the fake Kubernetes API of test_handlers.py. A hit creates no pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datarun_operator import handlers, runrecord
from datarun_operator.builder import FUSE, MAIN
from datarun_operator.models import DataRun
from datarun_operator.result import app_image_id
from tests.operator.builders import body, fuse_result, spec, terminated, with_status
from tests.operator.test_handlers import FakeKube, Store, create, current, deliver, events, kube, store

__all__ = ["events", "kube", "store"]  # fixtures, registered by import

DIGEST = "sha256:" + "1" * 64
PINNED_IMAGE = f"registry.example/tool@{DIGEST}"
VERSIONS = {"wrapper": "w", "sidecar": "s"}


def _run(**overrides: Any) -> DataRun:
    return DataRun.from_body(body(spec(**overrides)))


def _key(run: DataRun, manifest: str = "a" * 64, digest: str | None = None) -> Any:
    return runrecord.cache_key(run, {"numbers": manifest}, VERSIONS, digest)


def test_the_key_of_a_datarun_covers_its_spec_and_keys_secrets_by_reference() -> None:
    env: list[dict[str, Any]] = [
        {"name": "MODE", "value": "fast"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    base = _run(image=PINNED_IMAGE, env=env, params={"lr": 1})
    key = _key(base)
    assert key.cacheable and key.parts["env"]["TOKEN"] == {"secret": "creds", "key": "token"}
    changes = {
        "image digest": _key(_run(image=f"registry.example/tool@sha256:{'2' * 64}", env=env, params={"lr": 1})),
        "one arg": _key(_run(image=PINNED_IMAGE, env=env, params={"lr": 1}, args=["other"])),
        "one env value": _key(_run(image=PINNED_IMAGE, env=[{**env[0], "value": "slow"}, env[1]], params={"lr": 1})),
        "one param": _key(_run(image=PINNED_IMAGE, env=env, params={"lr": 2})),
        "one input byte": _key(base, manifest="b" * 64),
        "cache version": _key(_run(image=PINNED_IMAGE, env=env, params={"lr": 1}, cache={"version": "2"})),
        "sidecar version": runrecord.cache_key(base, {"numbers": "a" * 64}, {**VERSIONS, "sidecar": "t"}),
    }
    for name, changed in changes.items():
        assert changed.key != key.key, name


def test_a_bare_tag_misses_until_trusted_or_its_digest_is_known() -> None:
    tagged = _run(image="busybox:1.36")
    assert not _key(tagged).cacheable
    assert _key(_run(image="busybox:1.36", cache={"trustTags": True})).cacheable
    assert _key(tagged, digest=f"docker.io/library/busybox@{DIGEST}").key == _key(_run(image=PINNED_IMAGE)).key


def test_a_datarun_that_dumps_a_database_is_not_cached() -> None:
    dumping = _run(image=PINNED_IMAGE, databases=[{"name": "db", "port": 5432, "outputRepo": "dumps"}])
    assert "outputRepo" in _key(dumping).uncacheable
    serving = _run(image=PINNED_IMAGE, databases=[{"name": "db", "port": 5432}])
    assert _key(serving).cacheable


def test_the_kubelets_image_id_is_read_from_the_app_container() -> None:
    pod = {"status": {"containerStatuses": [{"name": MAIN, "imageID": f"docker-pullable://busybox@{DIGEST}"}]}}
    assert app_image_id(pod) == f"busybox@{DIGEST}"
    assert app_image_id({"status": {"containerStatuses": [{"name": MAIN, "imageID": ""}]}}) is None
    assert app_image_id(None) is None


def _named(name: str, uid: str, **overrides: Any) -> dict[str, Any]:
    raw = body(spec(**overrides), name=name)
    raw["metadata"]["uid"] = uid
    raw["metadata"]["creationTimestamp"] = f"2026-12-03T10:00:0{uid[-1]}Z"
    return raw


def _finish(kube: FakeKube, store: Store, name: str, image_id: str = "") -> str:
    """The first run's pod succeeds, with an output bundle that really exists in the store."""
    out = store.root / f"out-{name}"
    out.mkdir()
    (out / "r.txt").write_text("result")
    bundle = store.client.upload("out", out, "result", label="latest").bundle.id
    output = {"name": "result", "repo": "out", "path": "/data/out/result", "label": "latest", "bundle": bundle,
              "uploaded": True}  # fmt: skip
    pod = kube.pods[("team", f"{name}-run")]
    statuses = {MAIN: terminated(0), FUSE: terminated(0, fuse_result([output]))}
    done = with_status(pod, "Succeeded", statuses)
    for cs in done["status"]["containerStatuses"]:
        if cs["name"] == MAIN and image_id:
            cs["imageID"] = image_id
    deliver("MODIFIED", done)
    assert current(kube, name)["status"]["phase"] == "Succeeded"
    return bundle


def test_a_second_identical_datarun_creates_no_pod_and_is_a_cache_hit(
    kube: FakeKube, store: Store, events: list[Any]
) -> None:
    store.upload("1 2 3")
    handlers.start(body=create(kube, _named("one", "uid-1", image=PINNED_IMAGE)), namespace="team", name="one")
    first_record = current(kube, "one")["status"]["runRecord"]
    assert current(kube, "one")["status"]["cacheKey"]
    bundle = _finish(kube, store, "one")
    # Someone moves the label elsewhere; the hit must move it back to the cached bundle.
    other = store.client.upload("out", store.root / "out-one", "other", label="latest").bundle.id
    assert other != bundle
    handlers.start(body=create(kube, _named("two", "uid-2", image=PINNED_IMAGE)), namespace="team", name="two")
    assert ("team", "two-run") not in kube.pods, "a hit creates no pod"
    status = current(kube, "two")["status"]
    assert (status["phase"], status["reason"], status["cachedFrom"]) == ("Succeeded", "CacheHit", first_record)
    assert [(o["name"], o["bundle"], o["label"]) for o in status["outputs"]] == [("result", bundle, "latest")]
    assert store.client.get_label("out", "latest").bundle == bundle
    record = store.client.runs.get(status["runRecord"])
    assert record.phase == "Cached" and record.cache is not None and record.cache.cached_from == first_record
    assert [o.bundle for o in record.outputs] == [bundle]
    assert ("Normal", "CacheHit") in [e[:2] for e in events]


def test_a_changed_param_or_a_refresh_runs_and_off_records_nothing(kube: FakeKube, store: Store, events: Any) -> None:
    store.upload("1")
    handlers.start(body=create(kube, _named("one", "uid-1", image=PINNED_IMAGE)), namespace="team", name="one")
    _finish(kube, store, "one")
    handlers.start(
        body=create(kube, _named("two", "uid-2", image=PINNED_IMAGE, params={"x": 1})), namespace="team", name="two"
    )
    assert ("team", "two-run") in kube.pods
    refresh = _named("three", "uid-3", image=PINNED_IMAGE, cache={"policy": "refresh"})
    handlers.start(body=create(kube, refresh), namespace="team", name="three")
    assert ("team", "three-run") in kube.pods
    off = _named("four", "uid-4", image=PINNED_IMAGE, cache={"policy": "off"})
    handlers.start(body=create(kube, off), namespace="team", name="four")
    assert ("team", "four-run") in kube.pods and "cacheKey" not in current(kube, "four")["status"]


def test_a_hit_whose_output_is_gone_runs_again(kube: FakeKube, store: Store, events: Any) -> None:
    from datarun.layout import bundle_key

    store.upload("1")
    handlers.start(body=create(kube, _named("one", "uid-1", image=PINNED_IMAGE)), namespace="team", name="one")
    bundle = _finish(kube, store, "one")
    (Path(store.root) / "store" / bundle_key("out", bundle)).unlink()
    handlers.start(body=create(kube, _named("two", "uid-2", image=PINNED_IMAGE)), namespace="team", name="two")
    assert ("team", "two-run") in kube.pods


def test_a_tag_run_records_the_kubelets_digest_and_a_digest_pinned_twin_hits(
    kube: FakeKube, store: Store, events: Any
) -> None:
    store.upload("1")
    handlers.start(body=create(kube, _named("one", "uid-1", image="busybox:1.36")), namespace="team", name="one")
    _finish(kube, store, "one", image_id=f"docker-pullable://docker.io/library/busybox@{DIGEST}")
    first = store.client.runs.get(current(kube, "one")["status"]["runRecord"])
    assert first.image_digest == f"docker.io/library/busybox@{DIGEST}"
    handlers.start(body=create(kube, _named("two", "uid-2", image="busybox:1.36")), namespace="team", name="two")
    assert ("team", "two-run") in kube.pods, "a bare tag still misses"
    handlers.start(body=create(kube, _named("three", "uid-3", image=PINNED_IMAGE)), namespace="team", name="three")
    assert ("team", "three-run") not in kube.pods
    assert current(kube, "three")["status"]["cachedFrom"] == first.id


def test_a_hit_whose_output_was_invalidated_runs_again(kube: FakeKube, store: Store, events: Any) -> None:
    from datarun.catalog import open_index
    from datarun.lineage import Graph, bundle_node, invalidate

    store.upload("1")
    handlers.start(body=create(kube, _named("one", "uid-1", image=PINNED_IMAGE)), namespace="team", name="one")
    bundle = _finish(kube, store, "one")
    with open_index(None, store.root / "elsewhere") as index:  # the operator must sync it from the store
        graph = Graph(index)
        graph.sync(store.client.meta)
        invalidate(store.client.meta, graph, bundle_node("out", bundle), reason="bad labels", who="test")
    handlers.start(body=create(kube, _named("two", "uid-2", image=PINNED_IMAGE)), namespace="team", name="two")
    assert ("team", "two-run") in kube.pods, "an invalidated hit creates a pod"
    assert "cachedFrom" not in current(kube, "two")["status"]
