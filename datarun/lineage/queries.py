"""The read side of the lineage tables: ancestors and descendants by one recursive query under a time
budget, the invalidations that reached a node, and the watermark a poller compares.

``Graph`` (graph.py) adds the write side, syncing these tables from the store; the split keeps each
half small enough to read in one sitting. Both run unchanged on SQLite and PostgreSQL: SQL is
written once with ``:pN`` marks and rendered by the index's dialect.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from datarun.catalog import Index
from datarun.catalog.translate import Dialect
from datarun.errors import StoreError
from datarun.lineage.layout import NodeId, parse_node_key
from datarun.lineage.rows import Edge, Node, Walk


class Budget(Exception):
    """The recursive query ran past its time budget."""


class GraphQueries:
    """Queries over the lineage tables of ``index`` (created by ``Graph``)."""

    index: Index

    @property
    def dialect(self) -> Dialect:
        return self.index.dialect

    def _r(self, sql: str) -> str:
        return self.dialect.render(sql)

    def _marks(self, n: int) -> str:
        return ", ".join(["?" if self.dialect.name == "sqlite" else "%s"] * n)

    def exists(self, node: NodeId) -> bool:
        cur = self.index._cursor()
        cur.execute(self._r("SELECT 1 FROM lineage_nodes WHERE node = :p0"), {"p0": node.key})
        return cur.fetchone() is not None

    def walk(
        self,
        start: NodeId,
        direction: str,
        *,
        depth: int | None = 50,
        kinds: Sequence[str] = (),
        budget: float = 5.0,
    ) -> Walk:
        """Ancestors or descendants of ``start`` to ``depth`` by one recursive query. When the query
        runs past ``budget`` seconds it is asked again at half the depth, and the answer says ``cut``.

        ``depth=None`` is the whole closure (what a cascade needs): the query then keeps one row per
        node instead of one per (node, depth), so a DAG with many paths of different lengths stays
        linear in its edges; depths are not computed (-1, the start 0)."""
        began = time.monotonic()
        if depth is None:
            try:
                found = self._reach(start.key, direction, None, budget)
                cut = None
            except Budget:
                found, cut = {start.key: 0}, "time"
            nodes = self._nodes(found)
            edges = self._edges_among(found, direction)
            return Walk(start.key, direction, tuple(nodes), tuple(edges), cut, -1, time.monotonic() - began)
        cut = None
        asked = depth
        while True:
            try:
                found = self._reach(start.key, direction, asked, budget)
                break
            except Budget:
                cut = "time"
                if asked <= 1:
                    found = {start.key: 0}
                    asked = 0
                    break
                asked //= 2
        if cut is None and asked < depth:
            cut = "time"
        far = [n for n, d in found.items() if d == asked]
        if cut is None and far and self._has_more(far, direction):
            cut = "depth"
        edges = self._edges_among(found, direction)
        nodes = self._nodes(found)
        if kinds:
            keep = {n.node for n in nodes if n.type in kinds or n.kind in kinds or n.node == start.key}
            nodes = [n for n in nodes if n.node in keep]
            edges = [e for e in edges if e.src in keep and e.dst in keep]
        return Walk(start.key, direction, tuple(nodes), tuple(edges), cut, asked, time.monotonic() - began)

    def _reach(self, start: str, direction: str, depth: int | None, budget: float) -> dict[str, int]:
        near, far = ("dst", "src") if direction == "ancestors" else ("src", "dst")
        if depth is None:
            sql = self._r(
                "WITH RECURSIVE walk(node) AS (SELECT CAST(:p0 AS TEXT)"
                f" UNION SELECT e.{far} FROM walk w JOIN lineage_edges e ON e.{near} = w.node)"
                " SELECT node, CASE WHEN node = :p0 THEN 0 ELSE -1 END FROM walk"
            )
        else:
            sql = self._r(
                "WITH RECURSIVE walk(node, depth) AS ("
                " SELECT CAST(:p0 AS TEXT), 0"
                f" UNION SELECT e.{far}, w.depth + 1 FROM walk w JOIN lineage_edges e ON e.{near} = w.node"
                " WHERE w.depth < :p1)"
                " SELECT node, MIN(depth) FROM walk GROUP BY node"
            )
        params: dict[str, Any] = {"p0": start} if depth is None else {"p0": start, "p1": depth}
        if self.dialect.name == "sqlite":
            conn: sqlite3.Connection = self.index.conn  # type: ignore[attr-defined]
            deadline = time.monotonic() + budget
            conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 20_000)
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as err:
                if "interrupt" in str(err):
                    raise Budget from None
                raise
            finally:
                conn.set_progress_handler(None, 0)
            return {str(n): int(d) for n, d in rows}
        import psycopg

        pg = self.index.conn  # type: ignore[attr-defined]
        try:
            with pg.transaction():
                cur = pg.cursor()
                cur.execute(f"SET LOCAL statement_timeout = {max(1, int(budget * 1000))}")
                cur.execute(sql, params)
                return {str(n): int(d) for n, d in cur.fetchall()}
        except psycopg.errors.QueryCanceled:
            raise Budget from None
        except psycopg.Error as err:
            raise StoreError(f"lineage query on `{self.index.url}` failed: {err}") from None

    def _chunks(self, keys: Sequence[str], sql: str) -> Iterator[Any]:
        cur = self.index._cursor()
        for at in range(0, len(keys), 500):
            chunk = list(keys[at : at + 500])
            cur.execute(sql.format(self._marks(len(chunk))), chunk)
            yield from cur.fetchall()

    def _has_more(self, far: Sequence[str], direction: str) -> bool:
        col = "dst" if direction == "ancestors" else "src"
        return any(True for _ in self._chunks(far, f"SELECT 1 FROM lineage_edges WHERE {col} IN ({{}}) LIMIT 1"))

    def _edges_among(self, found: dict[str, int], direction: str) -> list[Edge]:
        col, other = ("dst", "src") if direction == "ancestors" else ("src", "dst")
        rows = self._chunks(list(found), f"SELECT src, dst, rel FROM lineage_edges WHERE {col} IN ({{}})")
        edges = [Edge(str(s), str(d), str(r)) for s, d, r in rows]
        keep = [e for e in edges if getattr(e, other) in found]
        return sorted(keep, key=lambda e: (e.src, e.dst, e.rel))

    def invalid_reasons(self, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Active invalidations (not revalidated) that reached each of ``keys``."""
        out: dict[str, list[str]] = {}
        sql = (
            "SELECT m.node, e.doc FROM lineage_marks m JOIN lineage_events e ON e.id = m.event"
            " WHERE m.node IN ({}) AND NOT EXISTS (SELECT 1 FROM lineage_events r WHERE r.op = 'revalidate'"
            " AND r.target = m.event)"
        )
        for node, doc in self._chunks(list(keys), sql):
            event = orjson.loads(doc)
            out.setdefault(str(node), []).append(
                f"{event['reason']} (origin {event['node']}, {event['who']}, {event['when']})"
            )
        return {k: tuple(sorted(v)) for k, v in out.items()}

    def _nodes(self, found: dict[str, int]) -> list[Node]:
        rows = {
            str(r[0]): r
            for r in self._chunks(
                list(found), "SELECT node, type, repo, ident, kind, title, doc FROM lineage_nodes WHERE node IN ({})"
            )
        }
        invalid = self.invalid_reasons(list(found))
        nodes = []
        for key, depth in found.items():
            row = rows.get(key)
            if row is None:
                ident = parse_node_key(key)
                nodes.append(Node(key, ident.type, ident.repo, ident.id, "", "", depth, invalid.get(key, ())))
                continue
            doc = orjson.loads(row[6])
            nodes.append(
                Node(
                    key,
                    str(row[1]),
                    str(row[2]),
                    str(row[3]),
                    str(row[4]),
                    str(row[5]),
                    depth,
                    invalid.get(key, ()),
                    params=doc.get("params", {}) if isinstance(doc, dict) else {},
                )
            )
        return sorted(nodes, key=lambda n: (n.depth if n.depth >= 0 else 1 << 30, n.node))  # -1: not computed

    def active_invalidations(self, node: NodeId) -> list[dict[str, Any]]:
        """Invalidation events whose origin is ``node`` and that no revalidation undid."""
        cur = self.index._cursor()
        cur.execute(
            self._r(
                "SELECT doc FROM lineage_events e WHERE e.op = 'invalidate' AND e.node = :p0 AND NOT EXISTS"
                " (SELECT 1 FROM lineage_events r WHERE r.op = 'revalidate' AND r.target = e.id) ORDER BY e.id"
            ),
            {"p0": node.key},
        )
        return [orjson.loads(r[0]) for r in cur.fetchall()]

    def watermark(self) -> str:
        """The newest invalidation or revalidation event known ("" if none): event ids are KSUIDs,
        which sort by time, so a poller that sees the same watermark knows nothing changed."""
        cur = self.index._cursor()
        cur.execute("SELECT MAX(id) FROM lineage_events")
        row = cur.fetchone()
        return "" if row is None or row[0] is None else str(row[0])

    def unfinished(self) -> list[dict[str, Any]]:
        cur = self.index._cursor()
        cur.execute("SELECT doc FROM lineage_events WHERE done = 0 AND op = 'invalidate' ORDER BY id")
        return [orjson.loads(r[0]) for r in cur.fetchall()]
