"""The lineage graph as tables in the run index, kept in step with the store, and queried by recursive SQL.

The store is the truth (bundle records name their inputs and run, run documents their inputs and
outputs, external records their parents, invalidation events and marks who is invalid); these
tables are a cache beside the catalog's, in the same database, so a lost index rebuilds from the
store. Edges point downstream: ``src`` is the parent, ``dst`` the child. ``rel`` says how:
``read`` (bundle -> run), ``wrote`` (run -> bundle), ``derived-from`` (parent -> bundle or record).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from datarun.catalog import Index
from datarun.errors import StoreError
from datarun.lineage.layout import DONE, EVENTS, MARKS, RECORDS, NodeId, loads, parse_node_key
from datarun.lineage.rows import Edge, LineageSync, Node, Walk, bundle_rows, record_rows, run_rows
from datarun.store.base import ObjectStore

_BUNDLE_RE = re.compile(r"^repos/([^/]+)/bundles/([0-9A-Za-z]{27})\.json$")
_DDL = """
CREATE TABLE IF NOT EXISTS lineage_nodes (node TEXT PRIMARY KEY, type TEXT NOT NULL, repo TEXT NOT NULL,
    ident TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lineage_edges (src TEXT NOT NULL, dst TEXT NOT NULL, rel TEXT NOT NULL,
    PRIMARY KEY (dst, src, rel));
CREATE INDEX IF NOT EXISTS lineage_edges_src ON lineage_edges (src, dst);
CREATE TABLE IF NOT EXISTS lineage_seen (key TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lineage_events (id TEXT PRIMARY KEY, op TEXT NOT NULL, node TEXT NOT NULL,
    target TEXT NOT NULL, done INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lineage_marks (event TEXT NOT NULL, node TEXT NOT NULL, PRIMARY KEY (node, event));
CREATE INDEX IF NOT EXISTS lineage_marks_event ON lineage_marks (event);
CREATE TABLE IF NOT EXISTS lineage_seed (event TEXT NOT NULL, node TEXT NOT NULL);
"""
_TABLES = ("lineage_nodes", "lineage_edges", "lineage_seen", "lineage_events", "lineage_marks", "lineage_seed")


class _Budget(Exception):
    """The recursive query ran past its time budget."""


class Graph:
    """The lineage tables of one run index. Use ``Graph(index)``, ``sync(store)``, then query."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.dialect = index.dialect
        with index._write() as cur:
            if self.dialect.name == "sqlite":
                for statement in _DDL.split(";"):
                    if statement.strip():
                        cur.execute(statement)
            else:
                cur.execute(_DDL)

    # -- small helpers ----------------------------------------------------------------------

    def _r(self, sql: str) -> str:
        return self.dialect.render(sql)

    def _marks(self, n: int) -> str:
        return ", ".join(["?" if self.dialect.name == "sqlite" else "%s"] * n)

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(sql.replace("?", "%s") if self.dialect.name != "sqlite" else sql, rows)

    def _upsert_node(self, rows: list[tuple[str, str, str, str, str, str, str]], node: NodeId, **extra: Any) -> None:
        rows.append(
            (
                node.key,
                node.type,
                node.repo,
                node.id,
                str(extra.get("kind", "")),
                str(extra.get("title", "")),
                orjson.dumps(extra.get("doc", {})).decode(),
            )
        )

    # -- syncing ----------------------------------------------------------------------------

    def sync(self, store: ObjectStore, *, workers: int = 32, invalidations_only: bool = False) -> LineageSync:
        """Bring the graph up to date: the catalog's runs, then bundle records, external records,
        invalidation events and the marks of cascades not yet known to be complete.

        ``invalidations_only`` skips the graph itself: what a download needs to refuse an invalid
        bundle costs two list requests (events, done markers) plus one per unfinished cascade."""
        began = time.monotonic()
        index = self.index
        stored = self._meta("lineage_store")
        if stored not in (None, store.url):
            with index._write() as cur:
                for table in _TABLES:
                    cur.execute(f"DELETE FROM {table}")
        if not invalidations_only:
            index.sync(store)
        cur = index._cursor()
        cur.execute("SELECT key, version FROM lineage_seen")
        seen = {str(k): int(v) for k, v in cur.fetchall()}
        listed = 0
        todo: list[str] = []
        for prefix in (EVENTS, DONE) if invalidations_only else ("repos/", RECORDS, EVENTS, DONE):
            for info in store.list(prefix):
                listed += 1
                if info.key in seen:
                    continue
                if prefix == "repos/" and not _BUNDLE_RE.match(info.key):
                    continue
                todo.append(info.key)
        cur.execute("SELECT id FROM lineage_events WHERE done = 0")
        open_events = [str(r[0]) for r in cur.fetchall()]
        done_now = {key[len(DONE) : -len(".json")] for key in todo if key.startswith(DONE)}
        mark_keys: list[str] = []
        new_events = [k[len(EVENTS) : -len(".json")] for k in todo if k.startswith(EVENTS)]
        for event in {*open_events, *new_events}:
            for info in store.list(f"{MARKS}{event}/"):
                listed += 1
                if info.key not in seen:
                    mark_keys.append(info.key)
        todo = [k for k in todo if not k.startswith(DONE)] + mark_keys
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            bodies = list(pool.map(lambda key: (key, store.read(key)[0]), todo))
        nodes: list[tuple[str, str, str, str, str, str, str]] = []
        edges: list[tuple[str, str, str]] = []
        events: list[tuple[str, str, str, str, int, str]] = []
        marks: list[tuple[str, str]] = []
        for key, raw in bodies:
            doc = loads(key, raw)
            if key.startswith(RECORDS):
                record_rows(doc, nodes, edges, self._upsert_node)
            elif key.startswith(MARKS):
                marks += [(str(doc["event"]), str(n)) for n in doc.get("nodes", [])]
            elif key.startswith(EVENTS):
                events.append(
                    (
                        str(doc["id"]),
                        str(doc["op"]),
                        str(doc["node"]),
                        str(doc.get("target", "")),
                        0,
                        orjson.dumps(doc).decode(),
                    )
                )
            else:
                bundle_rows(doc, nodes, edges, self._upsert_node)
        runs = [] if invalidations_only else self._runs_todo(seen)
        for doc in runs:
            run_rows(doc, nodes, edges, self._upsert_node)
        with index._write() as wcur:
            ph = self._marks
            if self.dialect.name == "sqlite":
                node_sql = f"INSERT OR REPLACE INTO lineage_nodes VALUES ({ph(7)})"
            else:
                node_sql = (
                    f"INSERT INTO lineage_nodes VALUES ({ph(7)}) ON CONFLICT (node) DO UPDATE SET "
                    "type = EXCLUDED.type, repo = EXCLUDED.repo, ident = EXCLUDED.ident, kind = EXCLUDED.kind, "
                    "title = EXCLUDED.title, doc = EXCLUDED.doc"
                )
            # A bundle or run seen only as someone's input is a placeholder; its own record wins.
            self._many(wcur, node_sql, [n for n in nodes if n[6] != "{}"])
            self._many(
                wcur,
                f"INSERT INTO lineage_nodes VALUES ({ph(7)}) ON CONFLICT (node) DO NOTHING",
                [n for n in nodes if n[6] == "{}"],
            )
            self._many(wcur, f"INSERT INTO lineage_edges VALUES ({ph(3)}) ON CONFLICT DO NOTHING", edges)
            self._many(wcur, f"INSERT INTO lineage_events VALUES ({ph(6)}) ON CONFLICT (id) DO NOTHING", events)
            self._many(wcur, f"INSERT INTO lineage_marks VALUES ({ph(2)}) ON CONFLICT DO NOTHING", marks)
            # Marks are re-listed until the cascade's done marker is seen; after that, never again.
            self._many(wcur, f"UPDATE lineage_events SET done = 1 WHERE id = {ph(1)}", [(e,) for e in done_now])
            self._inherit(wcur, edges, sorted(done_now))
            seen_rows = [(k, 0) for k in todo]
            seen_rows += [(f"runs/{d['id']}", int(d["version"])) for d in runs]
            self._many(
                wcur,
                f"INSERT INTO lineage_seen VALUES ({ph(2)}) ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version",
                seen_rows,
            )
            if stored is None and not invalidations_only:
                wcur.execute(
                    self._r(
                        "INSERT INTO index_meta (key, value) VALUES ('lineage_store', :p0) ON CONFLICT (key) DO NOTHING"
                    ),
                    {"p0": store.url},
                )
        return LineageSync(listed, len(bodies) + len(runs), time.monotonic() - began)

    def _inherit(self, cur: Any, edges: Sequence[tuple[str, str, str]], finished: Sequence[str]) -> None:
        """Extend finished invalidations to the nodes made after them.

        A cascade marks the descendants it found; a run that reads an invalid bundle later (with
        --allow-invalid), and what it writes, are descendants too, but no mark in the store names
        them. The rule "a descendant of an invalidated node is invalid" is kept in the index by
        propagating marks (index rows only, rebuilt the same way from the store) from (a) the new
        edges whose parent is marked and (b) the marks of cascades whose done marker just arrived,
        which covers a node made while the cascade ran. An unfinished cascade is left to its
        resume, so a half cascade still shows exactly what it reached."""
        ph = self._marks
        seeds: list[tuple[str, str]] = []
        by_src: dict[str, list[str]] = {}
        for src, dst, _rel in edges:
            by_src.setdefault(src, []).append(dst)
        if by_src:
            sql = "SELECT node, event FROM lineage_marks WHERE node IN ({})"
            for node, event in self._chunks_on(cur, sorted(by_src), sql):
                seeds += [(str(event), dst) for dst in by_src[str(node)]]
        if finished:
            sql = "SELECT event, node FROM lineage_marks WHERE event IN ({})"
            seeds += [(str(e), str(n)) for e, n in self._chunks_on(cur, list(finished), sql)]
        if not seeds:
            return
        self._many(cur, f"INSERT INTO lineage_seed VALUES ({ph(2)})", sorted(set(seeds)))
        cur.execute(
            "WITH RECURSIVE reach(event, node) AS (SELECT event, node FROM lineage_seed"
            " UNION SELECT r.event, x.dst FROM reach r JOIN lineage_edges x ON x.src = r.node)"
            " INSERT INTO lineage_marks SELECT event, node FROM reach WHERE true ON CONFLICT DO NOTHING"
        )
        cur.execute("DELETE FROM lineage_seed")

    def _chunks_on(self, cur: Any, keys: Sequence[str], sql: str) -> Iterator[Any]:
        for at in range(0, len(keys), 500):
            chunk = list(keys[at : at + 500])
            cur.execute(sql.format(self._marks(len(chunk))), chunk)
            yield from cur.fetchall()

    def flag_runs(self, *, full: bool) -> int:
        """Keep ``run.invalid`` (true/false) queryable: the catalog holds the flag
        (``Index.set_flags``); lineage says which runs an unrevoked invalidation marks."""
        cur = self.index._cursor()
        cur.execute(
            "SELECT m.node FROM lineage_marks m JOIN lineage_events e ON e.id = m.event WHERE m.node LIKE 'run/%'"
            " AND NOT EXISTS (SELECT 1 FROM lineage_events v WHERE v.op = 'revalidate' AND v.target = m.event)"
        )
        invalid = {str(r[0])[len("run/") :] for r in cur.fetchall()}
        return self.index.set_flags("invalid", invalid, full=full)

    def _meta(self, key: str) -> str | None:
        cur = self.index._cursor()
        cur.execute(self._r("SELECT value FROM index_meta WHERE key = :p0"), {"p0": key})
        row = cur.fetchone()
        return None if row is None else str(row[0])

    def _runs_todo(self, seen: dict[str, int]) -> list[dict[str, Any]]:
        cur = self.index._cursor()
        cur.execute("SELECT id, version FROM runs")
        stale = [str(i) for i, v in cur.fetchall() if seen.get(f"runs/{i}", -1) < int(v)]
        docs = []
        for run_id in stale:
            doc = self.index.get(run_id)
            if doc is not None:
                docs.append(doc)
        return docs

    def add_edges(self, edges: Iterable[tuple[str, str, str]], nodes: Iterable[tuple[str, str, str, str]]) -> None:
        """Put synthetic nodes (key, type, repo, id) and edges straight into the tables (benchmarks)."""
        ph = self._marks
        with self.index._write() as cur:
            self._many(
                cur,
                f"INSERT INTO lineage_nodes VALUES ({ph(7)}) ON CONFLICT (node) DO NOTHING",
                [(k, t, r, i, "", "", "{}") for k, t, r, i in nodes],
            )
            self._many(cur, f"INSERT INTO lineage_edges VALUES ({ph(3)}) ON CONFLICT DO NOTHING", list(edges))

    # -- queries ----------------------------------------------------------------------------

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
            except _Budget:
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
            except _Budget:
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
                    raise _Budget from None
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
            raise _Budget from None
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

    def refresh(self, store: ObjectStore) -> str:
        """Sync what invalidity needs and return the watermark. Cheap when nothing was ever
        invalidated (two list requests); otherwise the graph is synced too, so nodes made after a
        cascade inherit it (``_inherit``)."""
        self.sync(store, invalidations_only=True)
        mark = self.watermark()
        if mark:
            self.sync(store)
        return mark

    def unfinished(self) -> list[dict[str, Any]]:
        cur = self.index._cursor()
        cur.execute("SELECT doc FROM lineage_events WHERE done = 0 AND op = 'invalidate' ORDER BY id")
        return [orjson.loads(r[0]) for r in cur.fetchall()]
