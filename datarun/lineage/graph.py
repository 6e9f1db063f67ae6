"""The lineage graph as tables in the run index, kept in step with the store, and queried by recursive SQL.

The store is the truth (bundle records name their inputs and run, run documents their inputs and
outputs, external records their parents, invalidation events and marks who is invalid); these
tables are a cache beside the catalog's, in the same database, so a lost index rebuilds from the
store. Edges point downstream: ``src`` is the parent, ``dst`` the child. ``rel`` says how:
``read`` (bundle -> run), ``wrote`` (run -> bundle), ``derived-from`` (parent -> bundle or record).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from datarun.catalog import Index
from datarun.errors import ObjectNotFound
from datarun.layout import REPOS_PREFIX, bundle_key, bundles_prefix, repo_key
from datarun.lineage.layout import DONE, EVENTS, MARKS, RECORDS, NodeId, loads
from datarun.lineage.queries import GraphQueries
from datarun.lineage.rows import LineageSync, bundle_rows, listed_bundle_rows, record_rows, run_rows
from datarun.listing import LINKS, LISTINGS_PREFIX, BundleListing
from datarun.records import decode
from datarun.store.base import ObjectStore

_BUNDLE_RE = re.compile(r"^repos/([^/]+)/bundles/([0-9A-Za-z]{27})\.json$")
_Rows = dict[str, tuple[str, dict[str, Any]]]  # bundle key -> (repo, its row in the repo's listing)
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


class Graph(GraphQueries):
    """The lineage tables of one run index. Use ``Graph(index)``, ``sync(store)``, then query."""

    def __init__(self, index: Index) -> None:
        self.index = index
        with index._write() as cur:
            if self.dialect.name == "sqlite":
                for statement in _DDL.split(";"):
                    if statement.strip():
                        cur.execute(statement)
            else:
                cur.execute(_DDL)

    # -- small helpers ----------------------------------------------------------------------

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
        # Bundles are followed through each repo's listing index (one GET and one LIST a repo,
        # rows that carry their edges): listing `repos/` would cost a page per 5,000 keys of the
        # whole store on every sync. A new graph also lists the folders under `repos/` once, for
        # the repos no listing holds (a store older than the index).
        fresh = not invalidations_only and stored != store.url
        for prefix in (EVENTS, DONE) if invalidations_only else (RECORDS, EVENTS, DONE):
            for info in store.list(prefix):
                listed += 1
                if info.key not in seen:
                    todo.append(info.key)
        from_rows: _Rows = {}
        etags: dict[str, str] = {}
        stale_bases: list[str] = []
        if not invalidations_only:
            listed += self._follow_listings(store, seen, todo, from_rows, etags, stale_bases, fresh=fresh)
            todo = [k for k in todo if k not in from_rows]
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
            bodies = [(k, raw) for k, raw in pool.map(lambda key: (key, _read_present(store, key)), todo) if raw]
        nodes: list[tuple[str, str, str, str, str, str, str]] = []
        edges: list[tuple[str, str, str]] = []
        events: list[tuple[str, str, str, str, int, str]] = []
        marks: list[tuple[str, str]] = []
        for repo, row in from_rows.values():
            listed_bundle_rows(repo, row, nodes, edges, self._upsert_node)
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
            # The base each repo's rows came from is "seen" too, so that it goes with the rows.
            self._many(wcur, f"DELETE FROM lineage_seen WHERE key = {ph(1)}", [(k,) for k in stale_bases])
            seen_rows = [(k, 0) for k, _ in bodies] + [(k, 0) for k in from_rows]
            seen_rows += [(_base_key(repo, etag), 0) for repo, etag in etags.items()]
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

    def _follow_listings(
        self,
        store: ObjectStore,
        seen: dict[str, int],
        todo: list[str],
        from_rows: _Rows,
        etags: dict[str, str],
        stale_bases: list[str],
        *,
        fresh: bool,
    ) -> int:
        """Add each repo's bundles that the graph has not seen: from the listing's rows when they
        carry their edges, else (an older row, a tail entry, a repo without a base) as record
        keys to read; ``etags`` gets the etag of each base read, to be kept with what it gave,
        and ``stale_bases`` the seen keys of the bases they replace.
        A ``fresh`` graph reads every base, whatever etags the index remembers, and finds the
        repos that have no listing yet. Returns how many keys and folders were listed."""
        listed = 0
        repos: set[str] = set()
        for info in store.list(LISTINGS_PREFIX):
            listed += 1
            repos.add(info.key[len(LISTINGS_PREFIX) :].partition("/")[0])
        if fresh:
            for folder in store.list_folders(REPOS_PREFIX):
                listed += 1
                repos.add(folder[len(REPOS_PREFIX) : -1])
        queued = set(todo)
        known_bases = dict(_base_seen(k) for k in seen if k.startswith(LISTINGS_PREFIX))

        def want(key: str) -> None:
            if key not in seen and key not in queued and key not in from_rows:
                queued.add(key)
                todo.append(key)

        for repo in sorted(repos):
            try:
                created = str(decode(repo_key(repo), store.read(repo_key(repo))[0])["created"])
            except ObjectNotFound:
                continue  # a deleted repo leaves its listing behind (FORMAT.md §17)
            # A base seen before (same etag) holds only rows already taken: a HEAD, not a GET of
            # ~110 bytes per bundle.
            known = "" if fresh else known_bases.get(repo, "")
            followed = BundleListing(store, repo, created).follow(known)
            for bundle_id in followed.tail:
                want(bundle_key(repo, bundle_id))
            if followed.unchanged:
                continue
            if repo in known_bases:
                stale_bases.append(_base_key(repo, known_bases[repo]))
            if followed.base is None:
                for info in store.list(bundles_prefix(repo)):
                    listed += 1
                    if _BUNDLE_RE.match(info.key):
                        want(info.key)
                continue
            for bundle_id, row in followed.base.items():
                key = bundle_key(repo, bundle_id)
                if key in seen:
                    continue
                if isinstance(row.get(LINKS), dict):
                    from_rows[key] = (repo, row)
                else:
                    want(key)
            etags[repo] = followed.etag
        return listed

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

    def refresh(self, store: ObjectStore) -> str:
        """Sync what invalidity needs and return the watermark. Cheap when nothing was ever
        invalidated (two list requests); otherwise the graph is synced too, so nodes made after a
        cascade inherit it (``_inherit``)."""
        self.sync(store, invalidations_only=True)
        mark = self.watermark()
        if mark:
            self.sync(store)
        return mark


def _read_present(store: ObjectStore, key: str) -> bytes:
    """The object's bytes, or b"" when it is gone: a tail entry's commit that has not landed (or
    died), a bundle deleted between the listing and the read. Only what was read is marked seen."""
    try:
        return store.read(key)[0]
    except ObjectNotFound:
        return b""


def _base_key(repo: str, etag: str) -> str:
    """The ``lineage_seen`` key saying that the rows of ``repo``'s listing base with ``etag`` are in."""
    return f"{LISTINGS_PREFIX}{repo}/base.json@{etag}"


def _base_seen(key: str) -> tuple[str, str]:
    """(repo, etag) of a ``_base_key``."""
    repo, _, rest = key[len(LISTINGS_PREFIX) :].partition("/")
    return repo, rest.partition("@")[2]
