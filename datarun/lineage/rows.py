"""What the lineage graph answers with (nodes, edges, walks), and how store records become its rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datarun.lineage.layout import NodeId, bundle_node, parse_node_key


@dataclass(frozen=True, slots=True)
class Node:
    node: str  # the key: bundle/<repo>/<id>, run/<id>, record/<id>
    type: str
    repo: str
    id: str
    kind: str  # a record's kind; a run's phase; "" for bundles
    title: str  # a bundle's message, a run's title, a record's URI
    depth: int
    invalid: tuple[str, ...] = ()  # reasons of the active invalidations that reached it
    labels: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "type": self.type,
            "repo": self.repo,
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "depth": self.depth,
            "invalid": bool(self.invalid),
            "invalid_reasons": list(self.invalid),
            "labels": list(self.labels),
        }


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    rel: str

    def to_json(self) -> dict[str, str]:
        return {"src": self.src, "dst": self.dst, "rel": self.rel}


@dataclass(frozen=True, slots=True)
class Walk:
    """The answer to a lineage query; ``cut`` says it is partial and why (``depth`` or ``time``)."""

    start: str
    direction: str  # ancestors | descendants
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    cut: str | None
    depth: int  # the depth actually walked (smaller than asked when the time budget cut it)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "direction": self.direction,
            "cut": self.cut is not None,
            "cut_reason": self.cut,
            "depth": self.depth,
            "seconds": round(self.seconds, 4),
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [e.to_json() for e in self.edges],
        }


@dataclass(frozen=True, slots=True)
class LineageSync:
    listed: int
    fetched: int
    seconds: float


# -- turning store records into rows --------------------------------------------------------


def bundle_rows(doc: dict[str, Any], nodes: list[Any], edges: list[Any], upsert: Any) -> None:
    """A bundle record's node and edges."""
    prov = doc.get("provenance") or {}
    run = str((prov.get("run") or {}).get("run_id") or "")
    inputs = [(str(p["repo"]), str(p["bundle"])) for p in prov.get("inputs") or []]
    _bundle(str(doc["repo"]), doc, run, inputs, nodes, edges, upsert)


def listed_bundle_rows(repo: str, row: dict[str, Any], nodes: list[Any], edges: list[Any], upsert: Any) -> None:
    """The same node and edges from the bundle's row in its repo's listing (FORMAT.md §17), which
    carries the record's run and inputs, so that following a repo costs no GET per bundle."""
    links = row["links"]
    inputs = [(str(r), str(b)) for r, b in links.get("inputs", ())]
    _bundle(repo, row, str(links.get("run", "")), inputs, nodes, edges, upsert)


def _bundle(
    repo: str,
    doc: dict[str, Any],
    run: str,
    inputs: list[tuple[str, str]],
    nodes: list[Any],
    edges: list[Any],
    upsert: Any,
) -> None:
    me = bundle_node(repo, str(doc["id"]))
    upsert(nodes, me, title=str(doc.get("message", "")), doc={"created": doc.get("created", "")})
    for parent_repo, parent_bundle in inputs:
        src = bundle_node(parent_repo, parent_bundle)
        upsert(nodes, src)
        if run:
            edges.append((src.key, f"run/{run}", "read"))
        else:
            edges.append((src.key, me.key, "derived-from"))
    if run:
        upsert(nodes, NodeId("run", run))
        edges.append((f"run/{run}", me.key, "wrote"))


def run_rows(doc: dict[str, Any], nodes: list[Any], edges: list[Any], upsert: Any) -> None:
    me = NodeId("run", str(doc["id"]))
    upsert(
        nodes,
        me,
        kind=str(doc.get("phase", "")),
        title=str(doc.get("title", "")),
        doc={"params": doc.get("params", {}), "start": doc.get("start", "")},
    )
    for link in doc.get("inputs") or []:
        src = bundle_node(str(link["repo"]), str(link["bundle"]))
        upsert(nodes, src)
        edges.append((src.key, me.key, "read"))
    for link in doc.get("outputs") or []:
        dst = bundle_node(str(link["repo"]), str(link["bundle"]))
        upsert(nodes, dst)
        edges.append((me.key, dst.key, "wrote"))


def record_rows(doc: dict[str, Any], nodes: list[Any], edges: list[Any], upsert: Any) -> None:
    me = NodeId("record", str(doc["id"]))
    upsert(
        nodes,
        me,
        kind=str(doc.get("kind", "")),
        title=str(doc.get("uri", "")),
        doc={"tags": doc.get("tags", []), "meta": doc.get("meta", {})},
    )
    for parent in doc.get("derived_from") or []:
        src = parse_node_key(str(parent))
        upsert(nodes, src)
        edges.append((src.key, me.key, "derived-from"))
