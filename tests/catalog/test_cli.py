"""`datarun run query` and `datarun run list` through the real CLI, on a local store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from datarun.store import LocalStore
from tests.catalog.writer import corpus, run_doc, write_version
from tests.cli.conftest import Env, env

__all__ = ["env"]  # the CLI tier's fixture, registered by import


@pytest.fixture
def runs(env: Env) -> list[dict[str, Any]]:
    store = LocalStore(env.store)
    docs = corpus(80)
    for doc in docs:
        write_version(store, doc)
    return docs


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_query_filters_orders_and_limits(env: Env, runs: list[dict[str, Any]]) -> None:
    result = env.ok("run", "query", "run.params.model.layers >= 2 AND run.phase != 'Failed'", "--json", "--top", "100")
    got = json.loads(result.out)
    assert got and all(r["params"]["model"]["layers"] >= 2 and r["phase"] != "Failed" for r in got)
    assert not any(r["hidden"] for r in got)
    starts = [(r["start"], r["id"]) for r in got]
    assert starts == sorted(starts, reverse=True), "newest first"
    ordered = json.loads(
        env.ok(
            "run", "query", "IS_NUMBER(run.params.lr)", "--order-by", "run.params.lr DESC", "--top", "5", "--json"
        ).out
    )
    lrs = [r["params"]["lr"] for r in ordered]
    assert len(lrs) == 5 and lrs == sorted(lrs, reverse=True)
    assert lrs[0] == max(
        d["params"]["lr"]
        for d in runs
        if not d["hidden"]
        and isinstance(d["params"].get("lr"), int | float)
        and not isinstance(d["params"]["lr"], bool)
    )


def test_list_is_newest_first_top_10_and_hidden_on_request(env: Env, runs: list[dict[str, Any]]) -> None:
    shown = _ids(env.ok("run", "list").out)
    visible = sorted((d for d in runs if not d["hidden"]), key=lambda d: (str(d["start"]), str(d["id"])), reverse=True)
    assert shown == [d["id"] for d in visible[:10]]
    everything = _ids(env.ok("run", "list", "--hidden", "--top", "1000").out)
    assert len(everything) == 80


def test_a_bad_query_exits_2_naming_position_and_token(env: Env, runs: list[dict[str, Any]]) -> None:
    result = env.run("run", "query", "1=1) OR (1=1")
    assert result.code == 2
    assert "position 4, near `)`" in result.err and result.out == ""
    result = env.run("run", "query", "run.params.lr > 1", "--order-by", "run.params.lr > 1 DESC")
    assert result.code == 2 and "--order-by takes a value" in result.err
    assert env.run("run", "query", "run.x = 1", "--top", "-1").code == 2


def test_the_index_url_comes_from_the_flag_then_the_env_then_the_config(
    env: Env, runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    default = env.tmp / "cache" / "index.sqlite"
    env.ok("run", "list")
    assert default.exists()
    configured = env.tmp / "configured.sqlite"
    (env.tmp / "config.yaml").write_text(f"index: sqlite://{configured}\n")
    env.ok("run", "list")
    assert configured.exists()
    from_env = env.tmp / "env.sqlite"
    monkeypatch.setenv("DATARUN_INDEX", f"sqlite://{from_env}")
    env.ok("run", "list")
    assert from_env.exists()
    flagged = env.tmp / "flag.sqlite"
    assert _ids(env.ok("run", "list", "--index", f"sqlite://{flagged}").out) == _ids(env.ok("run", "list").out)
    assert flagged.exists()


def test_an_index_from_a_newer_datarun_exits_2_and_is_left_alone(env: Env, runs: list[dict[str, Any]]) -> None:
    path = env.tmp / "i.sqlite"
    env.ok("run", "list", "--index", f"sqlite://{path}")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE index_meta SET value = '7' WHERE key = 'schema'")
    result = env.run("run", "list", "--index", f"sqlite://{path}")
    assert result.code == 2 and "newer datarun" in result.err and "upgrade datarun" in result.err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 80


def test_new_runs_show_up_on_the_next_query(env: Env, runs: list[dict[str, Any]]) -> None:
    assert _ids(env.ok("run", "query", "run.title = 'fresh'").out) == []
    write_version(LocalStore(env.store), run_doc("fresh-run", title="fresh", start="2027-01-01T00:00:00Z"))
    assert _ids(env.ok("run", "query", "run.title = 'fresh'").out) == ["fresh-run"]
    assert _ids(env.ok("run", "list", "--top", "1").out) == ["fresh-run"]


def test_an_unreachable_postgresql_index_is_a_store_error(env: Env, runs: list[dict[str, Any]], tmp_path: Path) -> None:
    result = env.run("run", "list", "--index", "postgresql://nobody:secret@127.0.0.1:1/none")
    assert result.code == 6
    assert "cannot connect to the run index `postgresql://nobody:***@127.0.0.1:1/none`" in result.err
    assert "secret" not in result.err


def test_compact_writes_a_snapshot_that_a_new_index_starts_from(
    env: Env, runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = env.ok("run", "compact")
    (snapshot,) = (env.store / "runs" / "snapshots").iterdir()
    assert snapshot.name.endswith(".jsonl.zst") and snapshot.name[:27] in result.err + result.out
    fresh = f"sqlite://{tmp_path / 'fresh.sqlite'}"
    listed = json.loads(env.ok("run", "list", "--top", "100", "--hidden", "--json", "--index", fresh).out)
    assert sorted(r["id"] for r in listed) == sorted(d["id"] for d in runs)
