"""The run index: a cache of the store's run records that answers queries, on SQLite or PostgreSQL.

The store is the truth. The index keeps, per run, its newest version (``runs``) and that
version's flattened rows (``run_params``; path texts are interned in ``run_paths`` so 100k runs
do not repeat ``params.model.lr`` a million times). It catches up by listing the change feed
``runs/changes/`` after a watermark. Writers on other hosts have skewed clocks, so a change can
land with a key a little *older* than one already seen: each sync re-lists a window of
``skew`` seconds behind the watermark and skips the keys it remembers (``index_seen``), so an
up-to-date index costs one list request and no reads. Versions are applied only when newer,
so replays and races are harmless. Deleting the index loses nothing: the next sync rebuilds it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from datarun.catalog import language, translate
from datarun.catalog.feed import (
    CHANGE_RE,
    CHANGES,
    SNAPSHOT_FORMAT,
    SNAPSHOT_RE,
    SNAPSHOTS,
    checked,
    common_prefix,
    ksuid_seconds,
    parse_change,
    parse_snapshot,
)
from datarun.catalog.flatten import flatten
from datarun.errors import PreconditionFailed, UsageError
from datarun.ids import new_ksuid
from datarun.store.base import ObjectStore

SCHEMA = 2
"""The index's own schema; an index written by a newer one is refused, an older one rebuilt.
2: the (pid, type, num, text, rid) index that ``--order-by`` walks replaces (pid, type, num, rid)."""

DEFAULT_SKEW = 600.0  # seconds a writer's clock may be behind the newest change already seen
_AHEAD = 86_400.0  # seconds a writer's clock may be ahead of this host's; beyond, its changes wait
_FLAG_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# A flag shares the document's namespace (``run.<name>``): it must not shadow a record field.
_RECORD_FIELDS = frozenset(
    [
        "format",
        "id",
        "version",
        "start",
        "end",
        "updated",
        "title",
        "phase",
        "exit_code",
        "params",
        "command",
        "image",
        "image_digest",
        "author",
        "host",
        "inputs",
        "outputs",
        "tags",
        "annotations",
        "hidden",
        "source",
        "cache",
    ]
)


@dataclass(frozen=True, slots=True)
class SyncStats:
    listed: int  # keys the list returned (the window included)
    fetched: int  # change objects read
    applied: int  # run versions that were newer than the index's
    seconds: float
    rebuilt: bool  # the index started from empty (new, deleted, older schema, other store)


class _Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Index:
    """The common part; a backend supplies the connection, the DDL and a few statements."""

    dialect: translate.Dialect
    url: str

    def __init__(self, *, skew: float = DEFAULT_SKEW) -> None:
        self.skew = skew
        self._pids: dict[str, int] = {}
        self.rebuilt = False

    # -- what a backend provides ------------------------------------------------------------

    def _cursor(self) -> _Cursor:
        raise NotImplementedError

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _insert_run(self, cur: _Cursor, doc: Mapping[str, Any], body: str) -> int:
        raise NotImplementedError

    def _load(self, raw: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _reset(self, cur: _Cursor) -> None:
        for table in ("run_params", "runs", "run_paths", "index_seen"):
            cur.execute(f"DELETE FROM {table}")  # noqa: S608 - table names are this module's own
        cur.execute("DELETE FROM index_meta WHERE key <> 'schema'")
        self._pids.clear()
        self.rebuilt = True

    def close(self) -> None:
        raise NotImplementedError

    # -- meta -------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        cur = self._cursor()
        cur.execute(self.dialect.render("SELECT value FROM index_meta WHERE key = :p0"), {"p0": key})
        row = cur.fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, cur: _Cursor, key: str, value: str) -> None:
        cur.execute(
            self.dialect.render(
                "INSERT INTO index_meta (key, value) VALUES (:p0, :p1) ON CONFLICT (key) DO UPDATE SET value = :p1"
            ),
            {"p0": key, "p1": value},
        )

    def _check_schema(self, found: str | None) -> bool:
        """True when the tables must be (re)created empty."""
        if found is None:
            return True
        if int(found) > SCHEMA:
            raise UsageError(
                f"the run index `{self.url}` was written by a newer datarun (index schema {found}; this one knows "
                f"{SCHEMA}): upgrade datarun, or point --index at another place (an index rebuilds from the store)"
            )
        return int(found) < SCHEMA

    # -- writing ----------------------------------------------------------------------------

    def _pid(self, cur: _Cursor, key: str) -> int:
        pid = self._pids.get(key)
        if pid is None:
            render = self.dialect.render
            cur.execute(render("SELECT pid FROM run_paths WHERE path = :p0"), {"p0": key})
            row = cur.fetchone()
            if row is None:
                cur.execute(render("INSERT INTO run_paths (path) VALUES (:p0) RETURNING pid"), {"p0": key})
                row = cur.fetchone()
            pid = self._pids[key] = int(row[0])
        return pid

    def _apply_all(self, cur: _Cursor, docs: Sequence[Mapping[str, Any]]) -> int:
        """Apply the newest version of each run among ``docs``; rows are inserted in one batch."""
        newest: dict[str, Mapping[str, Any]] = {}
        for doc in docs:
            seen = newest.get(doc["id"])
            if seen is None or int(seen["version"]) < int(doc["version"]):
                newest[doc["id"]] = doc
        rows: list[tuple[int, int, int, str | None, float | None]] = []
        applied = sum(self._apply(cur, doc, rows) for doc in newest.values())
        mark = "?" if self.dialect.name == "sqlite" else "%s"
        cur.executemany(
            f"INSERT INTO run_params (rid, pid, type, text, num) VALUES ({', '.join([mark] * 5)})",  # noqa: S608
            rows,
        )
        return applied

    def _apply(
        self, cur: _Cursor, doc: Mapping[str, Any], rows: list[tuple[int, int, int, str | None, float | None]]
    ) -> bool:
        render = self.dialect.render
        cur.execute(render("SELECT rid, version FROM runs WHERE id = :p0"), {"p0": doc["id"]})
        row = cur.fetchone()
        if row is not None and int(row[1]) >= int(doc["version"]):
            return False  # a replay, or an older version arriving late
        body = orjson.dumps(doc).decode()
        if row is not None:
            rid = int(row[0])
            cur.execute(render("DELETE FROM run_params WHERE rid = :p0"), {"p0": rid})
            cur.execute(
                render(
                    "UPDATE runs SET version = :p1, start = :p2, phase = :p3, hidden = :p4, doc = :p5 WHERE rid = :p0"
                ),
                {"p0": rid, **_columns(doc, body)},
            )
        else:
            rid = self._insert_run(cur, doc, body)
        pids = self._pids
        for key, kind, text, num in flatten(doc):
            pid = pids.get(key)
            rows.append((rid, self._pid(cur, key) if pid is None else pid, kind, text, num))
        return True

    def add(self, docs: Sequence[Mapping[str, Any]]) -> int:
        """Put documents into the index directly (tests, benchmarks); ``sync`` is the normal way."""
        with self._write() as cur:
            return self._apply_all(cur, [checked(doc, "a document") for doc in docs])

    def sync(self, store: ObjectStore, *, workers: int = 32, snapshot: bool = True) -> SyncStats:
        """Catch up with the change feed of ``store``. An empty index starts from the newest
        snapshot (``compact``) when there is one and ``snapshot``, then reads the feed after it."""
        began = time.monotonic()
        rebuilt = self.rebuilt
        if self._meta("store") not in (None, store.url):
            # One index, one store: another store's runs would answer this store's queries.
            with self._write() as cur:
                self._reset(cur)
            rebuilt = True
        watermark = self._meta("watermark")
        listed = fetched = applied = 0
        if watermark is None:
            rebuilt = True
            if snapshot:
                listed, fetched, applied = self._from_snapshot(store)
                watermark = self._meta("watermark")
        start_after = None if watermark is None else CHANGES + new_ksuid(ksuid_seconds(watermark) - self.skew)
        prefix = CHANGES
        if start_after is not None:
            # Every key between the window's floor and a day ahead of now shares their common
            # prefix (the keys have one length), so only that slice is listed: on Azure, which
            # has no server-side "start after", this keeps old history out of each listing.
            ceiling = new_ksuid(time.time() + _AHEAD)
            prefix += common_prefix(start_after[len(CHANGES) :], ceiling)
        seen = self._seen(start_after)
        todo: list[str] = []
        for info in store.list(prefix, start_after=start_after):
            listed += 1
            if CHANGE_RE.match(info.key) and info.key not in seen:
                todo.append(info.key)
        newest = watermark
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                bodies = list(pool.map(lambda key: (key, store.read(key)[0]), todo))
            fetched += len(bodies)
            docs = [(key, parse_change(key, raw)) for key, raw in bodies]
            cap = new_ksuid(time.time() + 1)  # a writer with a clock ahead must not drag the window forward
            with self._write() as cur:
                applied += self._apply_all(cur, [doc for _, doc in docs])
                cur.executemany(
                    self.dialect.render("INSERT INTO index_seen (key) VALUES (:p0) ON CONFLICT (key) DO NOTHING"),
                    [{"p0": key} for key, _ in docs],
                )
                top = CHANGE_RE.match(max(todo))
                assert top is not None
                newest = max(newest or "", min(top.group(1), cap))
                self._set_meta(cur, "watermark", newest)
                self._set_meta(cur, "store", store.url)
                floor = CHANGES + new_ksuid(ksuid_seconds(newest) - self.skew)
                cur.execute(self.dialect.render("DELETE FROM index_seen WHERE key < :p0"), {"p0": floor})
        elif watermark is None:
            with self._write() as cur:
                self._set_meta(cur, "store", store.url)
        self.rebuilt = False
        return SyncStats(listed, fetched, applied, time.monotonic() - began, rebuilt)

    # -- snapshots ------------------------------------------------------------------------

    def compact(self, store: ObjectStore) -> str:
        """Write ``runs/snapshots/<watermark>.jsonl.zst``: the newest version of every run this
        index holds after a sync, and the change keys of its skew window, so that a new index
        reads one object instead of one per change, then only the feed after the watermark.

        Nothing is deleted, so a writer racing the compaction loses nothing: its change is
        either in the snapshot or in the feed after it (or inside the window, which the reader
        re-lists as every sync does), and versions apply only when newer."""
        import zstandard

        self.sync(store)
        watermark = self._meta("watermark")
        if watermark is None:
            raise UsageError(f"`{store.url}` has no runs yet: nothing to compact")
        cur = self._cursor()
        cur.execute("SELECT doc FROM runs ORDER BY id")
        docs = [self._load(row[0]) for row in cur.fetchall()]
        header = {"format": SNAPSHOT_FORMAT, "watermark": watermark, "runs": len(docs)}
        header["seen"] = sorted(self._seen(None))
        lines = [orjson.dumps(header), *(orjson.dumps(doc) for doc in docs)]
        body = zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n")
        key = f"{SNAPSHOTS}{watermark}.jsonl.zst"
        with contextlib.suppress(PreconditionFailed):  # another compaction at this watermark wrote the same runs
            store.put_if_absent(key, body)
        return key

    def _from_snapshot(self, store: ObjectStore) -> tuple[int, int, int]:
        """Load the newest snapshot into this empty index: (keys listed, objects read, applied)."""
        keys = [info.key for info in store.list(SNAPSHOTS)]
        found = sorted(k for k in keys if SNAPSHOT_RE.match(k))
        if not found:
            return len(keys), 0, 0
        key = found[-1]
        raw, _ = store.read(key)
        header, docs = parse_snapshot(key, raw)
        with self._write() as cur:
            applied = self._apply_all(cur, docs)
            cur.executemany(
                self.dialect.render("INSERT INTO index_seen (key) VALUES (:p0) ON CONFLICT (key) DO NOTHING"),
                [{"p0": k} for k in header["seen"]],
            )
            self._set_meta(cur, "watermark", header["watermark"])
            self._set_meta(cur, "store", store.url)
        return len(keys), 1, applied

    def _seen(self, start_after: str | None) -> set[str]:
        cur = self._cursor()
        if start_after is None:
            cur.execute("SELECT key FROM index_seen")
        else:
            cur.execute(self.dialect.render("SELECT key FROM index_seen WHERE key > :p0"), {"p0": start_after})
        return {str(r[0]) for r in cur.fetchall()}

    def set_flags(self, name: str, true_for: Iterable[str], *, full: bool = False) -> int:
        """Keep the boolean ``run.<name>`` queryable on every indexed run: true for the run ids
        in ``true_for``, false for the others. For what other parts of datarun know about a run
        but its record does not say (lineage's ``run.invalid``); returns the runs changed.

        A newer version of a run rewrites its rows and drops the flag, so after a sync that
        applied versions pass ``full`` to find the runs without it; otherwise only the runs
        whose flag changes are touched, and an unchanged set costs two small queries."""
        if not _FLAG_RE.match(name) or name in _RECORD_FIELDS:
            raise UsageError(f"`{name}` cannot be a run flag: use a lower-case name that no run record field has")
        from datarun.catalog.oracle import BOOL

        render = self.dialect.render
        mark = "?" if self.dialect.name == "sqlite" else "%s"
        ids = sorted(set(true_for))
        with self._write() as cur:
            pid = self._pid(cur, name)
            wanted: set[int] = set()
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                cur.execute(f"SELECT rid FROM runs WHERE id IN ({', '.join([mark] * len(chunk))})", chunk)  # noqa: S608
                wanted.update(int(r[0]) for r in cur.fetchall())
            cur.execute(render("SELECT rid FROM run_params WHERE pid = :p0 AND text = 'true'"), {"p0": pid})
            flagged = {int(r[0]) for r in cur.fetchall()}
            missing: set[int] = set()
            if full:
                cur.execute(
                    render(
                        "SELECT rid FROM runs r WHERE NOT EXISTS"
                        " (SELECT 1 FROM run_params p WHERE p.rid = r.rid AND p.pid = :p0)"
                    ),
                    {"p0": pid},
                )
                missing = {int(r[0]) for r in cur.fetchall()}
            change = sorted((wanted ^ flagged) | missing)
            if change:
                cur.executemany(
                    f"DELETE FROM run_params WHERE rid = {mark} AND pid = {mark}",  # noqa: S608
                    [(rid, pid) for rid in change],
                )
                cur.executemany(
                    f"INSERT INTO run_params (rid, pid, type, text, num) VALUES ({', '.join([mark] * 5)})",  # noqa: S608
                    [(rid, pid, BOOL, "true" if rid in wanted else "false", None) for rid in change],
                )
        return len(change)

    # -- reading ----------------------------------------------------------------------------

    def query(
        self,
        where: str | None,
        *,
        order_by: str | None = None,
        descending: bool = True,
        top: int | None = 10,
        include_hidden: bool = False,
    ) -> list[dict[str, Any]]:
        """Run documents matching ``where`` (the query language), newest first unless ``order_by``."""
        tree = language.parse(where) if where is not None and where.strip() else None
        order = language.parse_value(order_by) if order_by else None
        if top is not None and top < 0:
            raise UsageError(f"--top {top}: give a number of runs, 0 or more")
        parts = translate.select_sql(
            tree, dialect=self.dialect, order_by=order, descending=descending, top=top, include_hidden=include_hidden
        )
        cur = self._cursor()
        found: list[Any] = []
        for sql in parts:
            params = sql.params
            if sql.limit is not None and top is not None:
                if len(found) >= top:
                    break
                params = {**params, sql.limit: top - len(found)}
            cur.execute(sql.text, params)
            found.extend(row[0] for row in cur.fetchall())
        if not parts[0].rids:
            return [self._load(raw) for raw in found]
        docs: dict[int, Any] = {}
        mark = "?" if self.dialect.name == "sqlite" else "%s"
        for at in range(0, len(found), 500):
            chunk = found[at : at + 500]
            cur.execute(f"SELECT rid, doc FROM runs WHERE rid IN ({', '.join([mark] * len(chunk))})", chunk)  # noqa: S608
            docs.update((int(rid), raw) for rid, raw in cur.fetchall())
        return [self._load(docs[int(rid)]) for rid in found]

    def get(self, run_id: str) -> dict[str, Any] | None:
        cur = self._cursor()
        cur.execute(self.dialect.render("SELECT doc FROM runs WHERE id = :p0"), {"p0": run_id})
        row = cur.fetchone()
        return None if row is None else self._load(row[0])

    def count(self) -> int:
        cur = self._cursor()
        cur.execute("SELECT count(*) FROM runs")
        return int(cur.fetchone()[0])

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _columns(doc: Mapping[str, Any], body: str) -> dict[str, Any]:
    return {
        "p1": int(doc["version"]),
        "p2": str(doc.get("start") or ""),
        "p3": str(doc.get("phase") or ""),
        "p4": 1 if doc.get("hidden") is True else 0,
        "p5": body,
    }


__all__ = ["Index", "SyncStats"]
