"""What lineage writes to the store: external records, and invalidations with their cascades.

Everything is create-only and append-only, so racing writers lose nothing:
* an invalidation is an event ``lineage/events/<event-id>.json`` written *first* (the intent),
  then mark objects ``lineage/marks/<event-id>/<seq>.json`` naming the nodes the cascade reaches
  (up to 1,000 each), then
  ``lineage/done/<event-id>.json``. Two invalidations have two event ids and disjoint keys.
  A cascade killed half-way has an event without a done marker; the next ``invalidate`` finishes
  it (it reads the marks there and writes only the nodes they do not name).
* a revalidation is an event that names the invalidation it undoes; nothing is deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from datarun.errors import NotFoundError, PreconditionFailed, UsageError
from datarun.ids import new_ksuid
from datarun.lineage.actions import Outcome, run_actions
from datarun.lineage.graph import Graph
from datarun.lineage.layout import DONE, EVENTS, FORMAT, MARKS, RECORDS, NodeId, dumps, loads, now
from datarun.lineage.rows import Walk
from datarun.repo import Client
from datarun.store.base import ObjectStore


def add_record(
    store: ObjectStore,
    *,
    kind: str,
    uri: str,
    derived_from: Sequence[NodeId],
    tags: Sequence[str] = (),
    meta: dict[str, str] | None = None,
    author: str = "",
) -> dict[str, Any]:
    """Write an external record (create-only) and return its document."""
    if not kind.strip() or not uri.strip():
        raise UsageError("an external record needs a --kind (e.g. model) and a --uri")
    record_id = new_ksuid()
    doc = {
        "format": FORMAT,
        "id": record_id,
        "kind": kind,
        "uri": uri,
        "tags": sorted(set(tags)),
        "meta": dict(meta or {}),
        "derived_from": [p.key for p in derived_from],
        "created": now(),
        "author": author,
    }
    store.put_if_absent(f"{RECORDS}{record_id}.json", dumps(doc))
    return doc


@dataclass(frozen=True, slots=True)
class Cascade:
    event: dict[str, Any]
    walk: Walk  # the descendants the cascade reached (the origin included, at depth 0)
    written: int  # marks written now (0 for a dry run; fewer than the nodes when resuming)
    dry_run: bool
    resumed: tuple[str, ...] = ()  # earlier cascades this call finished
    actions: tuple[Outcome, ...] = ()  # the invalidation actions this cascade ran (datarun.lineage.actions)

    @property
    def nodes(self) -> list[str]:
        return [n.node for n in self.walk.nodes]


# Cascades follow the whole closure; the time budget is generous, and a cut cascade is refused.
CASCADE_BUDGET = 600.0


def _descendants(graph: Graph, node: NodeId) -> Walk:
    walk = graph.walk(node, "descendants", depth=None, budget=CASCADE_BUDGET)
    if walk.cut is not None:
        raise UsageError(
            f"the descendants of {node} could not all be found ({walk.cut} ran out); nothing was marked invalid"
        )
    return walk


MARKS_PER_OBJECT = 1000  # node keys per mark object: a 10k cascade is 10 writes, not 10,000


def _write_marks(store: ObjectStore, event: dict[str, Any], keys: Sequence[str], workers: int) -> int:
    """Write marks for those of ``keys`` that no mark object of this event names yet."""
    prefix = f"{MARKS}{event['id']}/"
    present = [info.key for info in store.list(prefix)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bodies = list(pool.map(lambda key: loads(key, store.read(key)[0]), present))
    done = {str(n) for body in bodies for n in body.get("nodes", [])}
    missing = sorted(set(keys) - done)
    seq = 1 + max((int(k[len(prefix) : -len(".json")]) for k in present), default=0)
    chunks = [missing[at : at + MARKS_PER_OBJECT] for at in range(0, len(missing), MARKS_PER_OBJECT)]
    base = {"format": FORMAT, "event": event["id"], "origin": event["node"], "reason": event["reason"]}

    def one(item: tuple[int, list[str]]) -> int:
        at, nodes = item
        body = dumps({**base, "nodes": nodes})
        n = at
        while True:
            try:
                store.put_if_absent(f"{prefix}{n:06d}.json", body)
                return len(nodes)
            except PreconditionFailed:
                # Another process finishing the same cascade took this number; the next free one
                # is as good (a node named twice is harmless).
                n += len(chunks)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sum(pool.map(one, [(seq + i, c) for i, c in enumerate(chunks)]))


def _finish(
    store: ObjectStore, graph: Graph, event: dict[str, Any], workers: int, client: Client | None
) -> tuple[Walk, int, list[Outcome]]:
    origin = NodeId(**_split(event["node"]))
    walk = _descendants(graph, origin)
    written = _write_marks(store, event, [n.node for n in walk.nodes], workers)
    outcomes: list[Outcome] = []
    if client is not None:
        # Actions run before the done marker, so a cascade killed among them runs the rest on resume.
        graph.sync(store, invalidations_only=True)
        outcomes = run_actions(client, graph, event, [n.node for n in walk.nodes])
    with contextlib.suppress(PreconditionFailed):  # another process finished the same cascade
        store.put_if_absent(f"{DONE}{event['id']}.json", dumps({"format": FORMAT, "event": event["id"], "when": now()}))
    return walk, written, outcomes


def _split(key: str) -> dict[str, str]:
    from datarun.lineage.layout import parse_node_key

    n = parse_node_key(key)
    return {"type": n.type, "id": n.id, "repo": n.repo}


def invalidate(
    store: ObjectStore,
    graph: Graph,
    node: NodeId,
    *,
    reason: str,
    who: str,
    dry_run: bool = False,
    workers: int = 32,
    client: Client | None = None,
) -> Cascade:
    """Mark ``node`` and every descendant invalid (or, with ``dry_run``, say which would be).

    With ``client``, the invalidation actions the cascade reaches run too (and are recorded)."""
    if not reason.strip():
        raise UsageError("--reason is required: say why, it is recorded with the invalidation")
    graph.sync(store)
    if not graph.exists(node):
        raise NotFoundError(f"{node} is not in the lineage graph of `{store.url}`; check the id (or its repo)")
    if dry_run:
        return Cascade({"node": node.key, "reason": reason}, _descendants(graph, node), 0, True)
    resumed = []
    for pending in graph.unfinished():
        _finish(store, graph, pending, workers, client)
        resumed.append(str(pending["id"]))
    event = {
        "format": FORMAT,
        "id": new_ksuid(),
        "op": "invalidate",
        "node": node.key,
        "reason": reason,
        "who": who,
        "when": now(),
    }
    store.put_if_absent(f"{EVENTS}{event['id']}.json", dumps(event))
    graph.sync(store)
    walk, written, outcomes = _finish(store, graph, event, workers, client)
    graph.sync(store)
    return Cascade(event, walk, written, False, tuple(resumed), tuple(outcomes))


def revalidate(store: ObjectStore, graph: Graph, node: NodeId, *, reason: str, who: str) -> list[dict[str, Any]]:
    """Undo every active invalidation whose origin is ``node``; each undo is its own event."""
    graph.sync(store)
    active = graph.active_invalidations(node)
    if not active:
        raise NotFoundError(f"{node} is not the origin of an active invalidation; nothing to revalidate")
    written = []
    for target in active:
        event = {
            "format": FORMAT,
            "id": new_ksuid(),
            "op": "revalidate",
            "node": node.key,
            "target": target["id"],
            "reason": reason,
            "who": who,
            "when": now(),
        }
        store.put_if_absent(f"{EVENTS}{event['id']}.json", dumps(event))
        written.append(event)
    graph.sync(store)
    return written
