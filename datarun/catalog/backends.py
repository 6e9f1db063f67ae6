"""The two homes of the run index: embedded SQLite (JSON1, the default, in the cache folder) and a
shared PostgreSQL (JSONB under a GIN index) for teams; and how a command chooses between them.
Both speak the base class's SQL (datarun.catalog.index); only connections, DDL and locking differ."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from datarun.catalog import translate
from datarun.catalog.index import DEFAULT_SKEW, SCHEMA, Index, _columns, _Cursor
from datarun.errors import StoreError, UsageError

# -- SQLite ---------------------------------------------------------------------------------

_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, version INTEGER NOT NULL,
    start TEXT NOT NULL, phase TEXT NOT NULL, hidden INTEGER NOT NULL, doc TEXT NOT NULL CHECK (json_valid(doc)));
CREATE INDEX IF NOT EXISTS runs_start ON runs (start, id);
CREATE TABLE IF NOT EXISTS run_paths (pid INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS run_params (rid INTEGER NOT NULL, pid INTEGER NOT NULL, type INTEGER NOT NULL,
    text TEXT, num REAL);
CREATE INDEX IF NOT EXISTS run_params_ord ON run_params (pid, type, num, text, rid);
CREATE INDEX IF NOT EXISTS run_params_text ON run_params (pid, type, text, rid);
CREATE INDEX IF NOT EXISTS run_params_run ON run_params (rid, pid);
CREATE TABLE IF NOT EXISTS index_seen (key TEXT PRIMARY KEY);
"""

_TABLES = ("run_params", "runs", "run_paths", "index_seen", "index_meta")


class SqliteIndex(Index):
    dialect = translate.SQLITE

    def __init__(self, path: Path, *, skew: float = DEFAULT_SKEW) -> None:
        super().__init__(skew=skew)
        self.path = path
        self.url = f"sqlite://{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise UsageError(f"cannot open the run index `{path}`: {err}; check --index or DATARUN_INDEX") from None
        conn = self.conn
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Cosmos's LIKE is case-sensitive; SQLite's is not unless told.
        conn.execute("PRAGMA case_sensitive_like = ON")
        # Python's case mapping, so LOWER/UPPER agree with the oracle beyond ASCII.
        conn.create_function("lower", 1, _lower, deterministic=True)
        conn.create_function("upper", 1, _upper, deterministic=True)
        try:
            self._prepare()
        except sqlite3.DatabaseError as err:
            conn.close()
            raise UsageError(
                f"the run index `{path}` is not a datarun index ({err}); delete it (it rebuilds from the store)"
            ) from None

    def _prepare(self) -> None:
        found = None
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'index_meta'"
        ).fetchone()
        if row is not None:
            got = self.conn.execute("SELECT value FROM index_meta WHERE key = 'schema'").fetchone()
            found = None if got is None else str(got[0])
        if self._check_schema(found):
            with self._write() as cur:
                for table in _TABLES:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in _SQLITE_DDL.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                self._set_meta(cur, "schema", str(SCHEMA))
            self.rebuilt = True

    def _cursor(self) -> _Cursor:
        cur: _Cursor = self.conn.cursor()
        return cur

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Cursor]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            self._pids.clear()
            raise
        cur.execute("COMMIT")

    def _insert_run(self, cur: _Cursor, doc: Mapping[str, Any], body: str) -> int:
        cur.execute(
            "INSERT INTO runs (id, version, start, phase, hidden, doc) VALUES (:p0, :p1, :p2, :p3, :p4, :p5) "
            "RETURNING rid",
            {"p0": doc["id"], **_columns(doc, body)},
        )
        return int(cur.fetchone()[0])

    def _load(self, raw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    def close(self) -> None:
        self.conn.close()


def _lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text


def _upper(text: Any) -> Any:
    return text.upper() if isinstance(text, str) else text


# -- PostgreSQL -----------------------------------------------------------------------------

_PG_DDL = """
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    rid BIGSERIAL PRIMARY KEY, id TEXT COLLATE "C" NOT NULL UNIQUE, version INTEGER NOT NULL,
    start TEXT COLLATE "C" NOT NULL, phase TEXT NOT NULL, hidden SMALLINT NOT NULL, doc JSONB NOT NULL);
CREATE INDEX IF NOT EXISTS runs_start ON runs (start, id);
CREATE INDEX IF NOT EXISTS runs_doc ON runs USING GIN (doc jsonb_path_ops);
CREATE TABLE IF NOT EXISTS run_paths (pid BIGSERIAL PRIMARY KEY, path TEXT COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS run_params (rid BIGINT NOT NULL, pid BIGINT NOT NULL, type SMALLINT NOT NULL,
    text TEXT COLLATE "C", num DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS run_params_ord ON run_params (pid, type, num, text, rid);
CREATE INDEX IF NOT EXISTS run_params_text ON run_params (pid, type, text, rid);
CREATE INDEX IF NOT EXISTS run_params_run ON run_params (rid, pid);
CREATE TABLE IF NOT EXISTS index_seen (key TEXT COLLATE "C" PRIMARY KEY);
"""

_PG_LOCK = 0x6461746172756E  # "datarun": one schema change or sync at a time per database


class PostgresIndex(Index):
    """A shared index for a team: the same tables, with the documents as JSONB under a GIN index."""

    dialect = translate.POSTGRESQL

    def __init__(self, url: str, *, skew: float = DEFAULT_SKEW) -> None:
        super().__init__(skew=skew)
        self.url = _redacted(url)
        try:
            import psycopg
        except ImportError:
            raise UsageError(
                f"the run index `{self.url}` needs the `postgres` extra: pip install 'datarun[postgres]'"
            ) from None
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            detail = " ".join(str(err).split())
            raise StoreError(
                f"cannot connect to the run index `{self.url}`: {detail}; check --index or DATARUN_INDEX"
            ) from None
        with self._write() as cur:
            cur.execute("SELECT to_regclass('index_meta')")
            found = None
            if cur.fetchone()[0] is not None:
                cur.execute("SELECT value FROM index_meta WHERE key = 'schema'")
                row = cur.fetchone()
                found = None if row is None else str(row[0])
            if self._check_schema(found):
                for table in _TABLES:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")
                cur.execute(_PG_DDL)
                self._set_meta(cur, "schema", str(SCHEMA))
                self.rebuilt = True

    def _cursor(self) -> _Cursor:
        cur: _Cursor = self.conn.cursor()
        return cur

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Cursor]:
        try:
            with self.conn.transaction():
                cur = self.conn.cursor()
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
                yield cur
        except BaseException:
            self._pids.clear()
            raise

    def _insert_run(self, cur: _Cursor, doc: Mapping[str, Any], body: str) -> int:
        cur.execute(
            "INSERT INTO runs (id, version, start, phase, hidden, doc) "
            "VALUES (%(p0)s, %(p1)s, %(p2)s, %(p3)s, %(p4)s, %(p5)s::jsonb) RETURNING rid",
            {"p0": doc["id"], **_columns(doc, body)},
        )
        return int(cur.fetchone()[0])

    def _load(self, raw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = raw if isinstance(raw, dict) else orjson.loads(raw)
        return doc

    def close(self) -> None:
        self.conn.close()


def _redacted(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# -- choosing -------------------------------------------------------------------------------

ENV_INDEX = "DATARUN_INDEX"


def choose_index_url(url: str | None, cache_dir: Path) -> str:
    """``--index``, then DATARUN_INDEX, then the config file's ``index``, then SQLite in the cache."""
    if url:
        return url
    if os.environ.get(ENV_INDEX):
        return os.environ[ENV_INDEX]
    from datarun.config import load_config

    configured = load_config().index
    if configured:
        return configured
    return f"sqlite://{cache_dir / 'index.sqlite'}"


def open_index(url: str | None, cache_dir: Path, *, skew: float = DEFAULT_SKEW) -> Index:
    chosen = choose_index_url(url, cache_dir)
    if chosen.startswith(("postgresql://", "postgres://")):
        return PostgresIndex(chosen, skew=skew)
    if chosen.startswith("sqlite://"):
        rest = chosen[len("sqlite://") :]
        if not rest.startswith("/"):
            raise UsageError(f"index URL `{chosen}`: use sqlite:///absolute/path (three slashes)")
        return SqliteIndex(Path(rest), skew=skew)
    if "://" not in chosen:
        return SqliteIndex(Path(chosen).expanduser().absolute(), skew=skew)
    raise UsageError(f"unsupported index URL `{_redacted(chosen)}`: use sqlite:///path or postgresql://user@host/db")
