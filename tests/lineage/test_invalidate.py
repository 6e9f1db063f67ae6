"""Invalidation on a real local store with both index backends: cascade, dry run, revalidation, races, resume."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from datarun.catalog import Index, open_index
from datarun.errors import NotFoundError, UsageError
from datarun.lineage import Graph, invalidate, revalidate
from datarun.lineage.layout import DONE, EVENTS, MARKS, dumps
from tests.lineage.conftest import World


def _invalid(graph: Graph, world: World) -> set[str]:
    every = [world.a, world.a2, world.lone, world.run, world.f, world.m, world.x]
    graph.sync(world.client.meta)
    return set(graph.invalid_reasons([n.key for n in every]))


def test_cascade_marks_exactly_what_the_dry_run_listed(graph: Graph, world: World) -> None:
    dry = invalidate(world.client.meta, graph, world.f, reason="bad features", who="t", dry_run=True)
    assert set(dry.nodes) == {world.f.key, world.m.key, world.x.key}
    assert _invalid(graph, world) == set(), "a dry run writes nothing"
    assert not list(world.client.meta.list("lineage/events/"))
    real = invalidate(world.client.meta, graph, world.f, reason="bad features", who="t")
    assert set(real.nodes) == set(dry.nodes) and real.written == 3
    assert _invalid(graph, world) == set(dry.nodes)
    event = orjson.loads(world.client.meta.read(f"{EVENTS}{real.event['id']}.json")[0])
    assert (event["op"], event["node"], event["reason"], event["who"]) == (
        "invalidate",
        world.f.key,
        "bad features",
        "t",
    )
    assert event["when"].endswith("Z")
    reasons = graph.invalid_reasons([world.x.key])[world.x.key]
    assert len(reasons) == 1 and "bad features" in reasons[0] and world.f.key in reasons[0]


def test_revalidate_undoes_and_is_recorded(graph: Graph, world: World) -> None:
    invalidate(world.client.meta, graph, world.a, reason="sensor broken", who="t")
    assert _invalid(graph, world) == {world.a.key, world.run.key, world.f.key, world.m.key, world.x.key}
    undone = revalidate(world.client.meta, graph, world.a, reason="sensor was fine", who="u")
    assert len(undone) == 1
    assert _invalid(graph, world) == set()
    ops = sorted(orjson.loads(world.client.meta.read(i.key)[0])["op"] for i in world.client.meta.list(EVENTS))
    assert ops == ["invalidate", "revalidate"], "append-only: the invalidation is kept"
    with pytest.raises(NotFoundError, match="not the origin"):
        revalidate(world.client.meta, graph, world.a, reason="again", who="u")


def test_two_overlapping_invalidations_both_hold(graph: Graph, world: World) -> None:
    invalidate(world.client.meta, graph, world.a, reason="one", who="t")
    invalidate(world.client.meta, graph, world.a2, reason="two", who="t")
    reasons = graph.invalid_reasons([world.m.key])[world.m.key]
    assert len(reasons) == 2
    revalidate(world.client.meta, graph, world.a2, reason="fine", who="t")
    assert _invalid(graph, world) == {world.a.key, world.run.key, world.f.key, world.m.key, world.x.key}


def test_racing_invalidations_lose_nothing(index_url: str, world: World, tmp_path: Path) -> None:
    # Two writers, each with its own index (two hosts), invalidating overlapping subgraphs at once.
    urls = [index_url, f"sqlite://{tmp_path / 'other.sqlite'}"]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(url: str, node: object, reason: str) -> None:
        try:
            with open_index(url, tmp_path) as idx:
                g = Graph(idx)
                g.sync(world.client.meta)
                barrier.wait()
                invalidate(world.client.meta, g, node, reason=reason, who=reason)  # type: ignore[arg-type]
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=writer, args=(urls[0], world.a, "first")),
        threading.Thread(target=writer, args=(urls[1], world.f, "second")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open_index(index_url, tmp_path) as idx:
        g = Graph(idx)
        g.sync(world.client.meta)
        reasons = g.invalid_reasons([world.x.key, world.run.key])
    assert len(reasons[world.x.key]) == 2
    assert len(reasons[world.run.key]) == 1
    assert len(list(world.client.meta.list(DONE))) == 2


def test_interrupted_cascade_completes_on_rerun(graph: Graph, world: World) -> None:
    # What a writer killed mid-cascade leaves: the event, one mark, no done marker. (A kill -9 in
    # the middle of a thread pool cannot be aimed at a point in a test; the store state is the same.)
    store = world.client.meta
    event = {"format": 1, "id": "3MxsAKEXsfyWG3xgP3yRyjBmvjb", "op": "invalidate", "node": world.a.key}
    event |= {"reason": "killed", "who": "t", "when": "2026-12-03T00:00:00Z"}
    store.put_if_absent(f"{EVENTS}{event['id']}.json", dumps(event))
    first = {"format": 1, "event": event["id"], "origin": world.a.key, "reason": "killed", "nodes": [world.a.key]}
    store.put_if_absent(f"{MARKS}{event['id']}/000001.json", dumps(first))
    assert _invalid(graph, world) == {world.a.key}, "a half cascade shows what it reached"
    done = invalidate(store, graph, world.lone, reason="other", who="t")
    assert done.resumed == (event["id"],)
    assert _invalid(graph, world) == {world.a.key, world.run.key, world.f.key, world.m.key, world.x.key, world.lone.key}
    assert {i.key for i in store.list(DONE)} >= {f"{DONE}{event['id']}.json"}
    marks = [orjson.loads(store.read(i.key)[0]) for i in store.list(f"{MARKS}{event['id']}/")]
    named = [n for m in marks for n in m["nodes"]]
    assert sorted(named) == sorted(set(named)), "the resumed cascade wrote only what was missing"


def test_bad_input_is_refused(graph: Graph, world: World) -> None:
    from datarun.lineage import NodeId

    with pytest.raises(UsageError, match="--reason"):
        invalidate(world.client.meta, graph, world.a, reason=" ", who="t")
    with pytest.raises(NotFoundError, match="not in the lineage graph"):
        invalidate(world.client.meta, graph, NodeId("run", "3MxsAKEXsfyWG3xgP3yRyjBmvjc"), reason="x", who="t")
    assert not list(world.client.meta.list("lineage/events/"))


def test_index_is_not_needed_for_truth(index: Index, graph: Graph, world: World, tmp_path: Path) -> None:
    invalidate(world.client.meta, graph, world.f, reason="bad", who="t")
    with open_index(f"sqlite://{tmp_path / 'fresh.sqlite'}", tmp_path) as fresh:
        g = Graph(fresh)
        assert _invalid(g, world) == {world.f.key, world.m.key, world.x.key}


def test_nodes_made_after_a_cascade_inherit_it(index_url: str, graph: Graph, world: World, tmp_path: Path) -> None:
    # A run that reads an invalid bundle anyway (--allow-invalid), what it writes, and a record
    # derived from that: no mark in the store names them, yet each descends from the invalid node.
    from datarun.ids import new_ksuid
    from datarun.lineage import NodeId, add_record, bundle_node
    from datarun.model import BundleRef, RunRecord
    from tests.catalog.writer import run_doc, write_version

    invalidate(world.client.meta, graph, world.f, reason="bad features", who="t")
    client = world.client
    folder = tmp_path / "late"
    folder.mkdir()
    (folder / "x.txt").write_text("late")
    run_id = new_ksuid()
    late = client.upload(
        "models", folder, "trained anyway", inputs=(BundleRef("feat", world.f.id),), run=RunRecord(run_id=run_id)
    ).bundle
    write_version(
        client.meta,
        run_doc(
            run_id,
            inputs=[{"name": "in", "repo": "feat", "bundle": world.f.id}],
            outputs=[{"name": "out", "repo": "models", "bundle": late.id}],
        ),
    )
    graph.sync(client.meta)
    record = add_record(client.meta, kind="model", uri="fpga://late", derived_from=[bundle_node("models", late.id)])
    graph.sync(client.meta)
    made = [NodeId("run", run_id).key, bundle_node("models", late.id).key, f"record/{record['id']}"]
    reasons = graph.invalid_reasons([*made, world.lone.key, world.a.key])
    assert set(reasons) == set(made), "what descends from an invalid node is invalid; nothing else"
    assert all("bad features" in r[0] and world.f.key in r[0] for r in reasons.values())
    # The same answer from a fresh index, built from the store alone.
    with open_index(f"sqlite://{tmp_path / 'fresh.sqlite'}", tmp_path) as fresh:
        g = Graph(fresh)
        g.sync(client.meta)
        assert set(g.invalid_reasons([*made, world.lone.key])) == set(made)
    # Revalidating the origin clears the inherited marks with the rest.
    revalidate(client.meta, graph, world.f, reason="fine after all", who="t")
    assert graph.invalid_reasons(made) == {}


def test_a_node_made_during_a_cascade_is_invalid_once_it_is_done(graph: Graph, world: World, tmp_path: Path) -> None:
    # The index saw the new child before the cascade's marks and done marker: the done marker
    # brings the marks, and they reach the child through the edge the index already had.
    from datarun.model import BundleRef

    store = world.client.meta
    folder = tmp_path / "mid"
    folder.mkdir()
    (folder / "y.txt").write_text("mid")
    child = world.client.upload("models", folder, "made mid-cascade", inputs=(BundleRef("models", world.m.id),)).bundle
    graph.sync(store)
    event = {"format": 1, "id": "3MxsAKEXsfyWG3xgP3yRyjBmvjd", "op": "invalidate", "node": world.m.key}
    event |= {"reason": "racing", "who": "t", "when": "2026-12-03T00:00:00Z"}
    store.put_if_absent(f"{EVENTS}{event['id']}.json", dumps(event))
    marks = {"format": 1, "event": event["id"], "origin": world.m.key, "reason": "racing", "nodes": [world.m.key]}
    store.put_if_absent(f"{MARKS}{event['id']}/000001.json", dumps(marks))
    store.put_if_absent(f"{DONE}{event['id']}.json", dumps({"format": 1, "event": event["id"], "when": "x"}))
    graph.sync(store)
    key = f"bundle/models/{child.id}"
    assert set(graph.invalid_reasons([key, world.x.key, world.f.key])) == {key, world.x.key}
