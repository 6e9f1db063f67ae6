"""Cache entries on a real local store: what qualifies, what a lookup returns, and explanations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datarun.cache import InputSpec, KeySpec, OutputSpec, compute_key, not_invalidated, run_nodes
from datarun.errors import UsageError
from datarun.layout import CACHE_PREFIX, bundle_key
from datarun.repo import Client
from datarun.runs import FAILED, SUCCEEDED, BundleLink, CacheStamp, Run, now_iso
from datarun.store import LocalStore

SPEC = KeySpec(command=("make", "model"), inputs={"d": InputSpec("a" * 64)}, outputs={"model": OutputSpec("m")})


@pytest.fixture
def client(tmp_path: Path) -> Client:
    c = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    c.create_repo("m")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "w.bin").write_bytes(b"weights")
    return c


def _run(client: Client, spec: KeySpec, phase: str = SUCCEEDED, code: int = 0, outputs: bool = True) -> Run:
    key = compute_key(spec)
    links: tuple[BundleLink, ...] = ()
    if outputs:
        bundle = client.upload("m", client.cache_dir.parent / "out", "model").bundle
        links = (BundleLink("model", "m", bundle.id),)
    runs = client.runs
    run = runs.create(Run(id=runs.new_id(), start=now_iso(), cache=CacheStamp(key.key, 1, key.parts)))
    done = runs.finish(run.id, phase, code, links)
    client.cache.record(done, key)
    return done


def test_a_succeeded_run_is_a_hit_and_its_record_keeps_the_stamp(client: Client) -> None:
    first = _run(client, SPEC)
    found = client.cache.lookup(compute_key(SPEC))
    assert found.hit is not None and found.hit.id == first.id
    assert found.hit.cache is not None and found.hit.cache.parts["command"] == ["make", "model"]
    assert client.cache.lookup(compute_key(dataclasses.replace(SPEC, salt="x"))).hit is None


def test_the_newest_qualifying_run_wins(client: Client) -> None:
    _run(client, SPEC)
    second = _run(client, SPEC)
    found = client.cache.lookup(compute_key(SPEC))
    assert found.hit is not None and found.hit.id == second.id


def test_failed_and_incomplete_runs_write_no_entry_and_never_hit(client: Client) -> None:
    key = compute_key(SPEC)
    failed = _run(client, SPEC, phase=FAILED, code=1)
    assert "only Succeeded runs with exit 0" in client.cache.qualifies(failed, key)
    nonzero = _run(client, SPEC, phase=SUCCEEDED, code=3)
    assert client.cache.qualifies(nonzero, key)
    missing = _run(client, SPEC, outputs=False)
    assert "model" in client.cache.qualifies(missing, key)
    assert list(client.meta.list(CACHE_PREFIX)) == []
    found = client.cache.lookup(key)
    assert found.hit is None and found.reason == "no earlier run has this key"


def test_a_hit_whose_output_bundle_is_gone_is_rejected_and_an_older_good_one_used(client: Client) -> None:
    older = _run(client, SPEC)
    newer = _run(client, SPEC)
    gone = newer.outputs[0]
    client.meta.delete(bundle_key(gone.repo, gone.bundle))
    found = client.cache.lookup(compute_key(SPEC))
    assert found.hit is not None and found.hit.id == older.id
    assert found.rejected[0][0] == newer.id and "no longer exists" in found.rejected[0][1]
    client.meta.delete(bundle_key(older.outputs[0].repo, older.outputs[0].bundle))
    assert client.cache.lookup(compute_key(SPEC)).hit is None


def test_a_run_whose_record_changed_phase_after_the_entry_is_not_a_hit(client: Client) -> None:
    run = _run(client, SPEC)
    client.runs.update(run.id, lambda r: dataclasses.replace(r, phase=FAILED))
    found = client.cache.lookup(compute_key(SPEC))
    assert found.hit is None and "Failed" in found.rejected[0][1]


def test_explain_names_the_nearest_earlier_run_and_the_differing_parts(client: Client) -> None:
    first = _run(client, SPEC)
    changed = dataclasses.replace(SPEC, params={"lr": 2}, inputs={"d": InputSpec("b" * 64)})
    second = _run(client, changed)
    explained = client.cache.explain(second)
    assert explained.nearest == first.id
    assert explained.differs == ("inputs.d.manifest", "params.lr")
    assert client.cache.explain(first).nearest is None
    with pytest.raises(UsageError, match="no cache key"):
        client.cache.explain(Run(id=first.id, start=now_iso()))


def test_an_invalidated_hit_is_rejected_through_lineage_and_an_older_good_one_used(client: Client) -> None:
    # The real lineage check: an invalidation event and its cascade's marks in the store, synced
    # into the run index (datarun.lineage), not a stand-in callable.
    from datarun.catalog import open_index
    from datarun.lineage import Graph, bundle_node, invalidate, invalidation_check

    older = _run(client, SPEC)
    newer = _run(client, SPEC)
    out = newer.outputs[0]
    with open_index(None, client.cache_dir) as index:
        graph = Graph(index)
        graph.sync(client.meta)
        invalidate(client.meta, graph, bundle_node(out.repo, out.bundle), reason="bad labels", who="test")
    assert f"bundle/{out.repo}/{out.bundle}" in run_nodes(newer) and f"run/{newer.id}" in run_nodes(newer)
    unchecked = client.cache.lookup(compute_key(SPEC))
    assert unchecked.hit is not None and unchecked.hit.id == newer.id  # without lineage nothing is stale
    cache = client.cache.checking(invalidation_check(client.meta, client.cache_dir))
    assert not_invalidated(older, cache.invalid) == ""
    assert "bad labels" in not_invalidated(newer, cache.invalid)
    found = cache.lookup(compute_key(SPEC))
    assert found.hit is not None and found.hit.id == older.id
    assert found.rejected[0][0] == newer.id and "invalidated" in found.rejected[0][1]
    assert "bad labels" in found.rejected[0][1]
