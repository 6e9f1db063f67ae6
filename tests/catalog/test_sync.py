"""The index follows the store's change feed: once, incrementally, across skewed clocks, and from scratch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from datarun.catalog import Index, open_index
from datarun.errors import IntegrityError, UsageError
from datarun.store import LocalStore
from tests.catalog.writer import corpus, run_doc, write_change, write_version
from tests.store.counting import CountingStore
from tests.store.emulators import Azurite


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(LocalStore(tmp_path / "store"))


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in rows]


def test_first_sync_reads_each_change_once_then_an_up_to_date_sync_is_one_list(
    index: Index, store: CountingStore
) -> None:
    docs = corpus(60)
    for doc in docs:
        write_version(store, doc)
    store.calls.clear()
    first = index.sync(store)
    assert (first.listed, first.fetched, first.applied, first.rebuilt) == (60, 60, 60, True)
    # An empty index also lists runs/snapshots/ (none here): two lists on a first sync.
    assert store.calls["read"] == 60 and store.calls["list"] == 2
    store.calls.clear()
    again = index.sync(store)
    assert (again.fetched, again.applied, again.rebuilt) == (0, 0, False)
    assert dict(store.calls) == {"list": 1}, "an up-to-date query costs one list request and no reads"
    assert index.count() == 60
    # Only the recent slice of the feed is listed: a prefix longer than the folder's.
    assert store.prefixes[-1].startswith("runs/changes/") and len(store.prefixes[-1]) > len("runs/changes/")


def test_a_newer_version_replaces_the_old_and_a_late_old_one_does_not(index: Index, store: CountingStore) -> None:
    run = run_doc("r1", phase="Running", params={"lr": 0.1})
    write_version(store, run)
    index.sync(store)
    assert _ids(index.query("run.phase = 'Running'")) == ["r1"]
    write_version(store, {**run, "version": 2, "phase": "Succeeded", "tags": ["best"]})
    assert index.sync(store).applied == 1
    assert _ids(index.query("run.phase = 'Running'")) == []
    assert _ids(index.query("ARRAY_CONTAINS(run.tags, 'best') AND run.phase = 'Succeeded'")) == ["r1"]
    # A writer replays version 1 (a retry, or a slow host): its change is read but not applied.
    write_change(store, run)
    stats = index.sync(store)
    assert (stats.fetched, stats.applied) == (1, 0)
    got = index.get("r1")
    assert got is not None and got["version"] == 2


def test_changes_from_skewed_clocks_are_caught_inside_the_window(index: Index, store: CountingStore) -> None:
    write_version(store, run_doc("now"))
    index.sync(store)
    # Another host's clock is two minutes behind: its key sorts before the watermark.
    write_version(store, run_doc("behind"), now=time.time() - 120)
    # And one is an hour ahead: it must not drag the window past the others.
    write_version(store, run_doc("ahead"), now=time.time() + 3600)
    stats = index.sync(store)
    assert (stats.fetched, stats.applied) == (2, 2)
    write_version(store, run_doc("later"), now=time.time() - 60)
    store.calls.clear()
    stats = index.sync(store)
    assert (stats.fetched, stats.applied) == (1, 1), "keys already seen in the window are not read again"
    assert store.calls["read"] == 1
    assert sorted(_ids(index.query(None, top=None))) == ["ahead", "behind", "later", "now"]


def test_deleting_the_sqlite_index_loses_nothing(tmp_path: Path, store: CountingStore) -> None:
    docs = corpus(40)
    for doc in docs:
        write_version(store, doc)
    path = tmp_path / "cache" / "index.sqlite"
    with open_index(None, tmp_path / "cache") as index:
        index.sync(store)
        before = index.query("run.params.lr > 0.01", top=None, include_hidden=True)
    assert path.exists()
    for leftover in path.parent.glob("index.sqlite*"):
        leftover.unlink()
    with open_index(None, tmp_path / "cache") as index:
        stats = index.sync(store)
        assert stats.rebuilt and stats.applied == 40
        assert index.query("run.params.lr > 0.01", top=None, include_hidden=True) == before


def test_dropping_the_postgresql_tables_loses_nothing(pg_database: str, tmp_path: Path, store: CountingStore) -> None:
    for doc in corpus(30):
        write_version(store, doc)
    with open_index(pg_database, tmp_path) as index:
        index.sync(store)
        before = _ids(index.query("IS_DEFINED(run.params.model)", top=None))
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE runs, run_params, run_paths, index_meta, index_seen")
    with open_index(pg_database, tmp_path) as index:
        assert index.sync(store).applied == 30
        assert _ids(index.query("IS_DEFINED(run.params.model)", top=None)) == before


def test_an_index_written_by_a_newer_schema_is_refused(index_url: str, tmp_path: Path) -> None:
    with open_index(index_url, tmp_path) as index:
        index.add([run_doc("r1")])
        with index._write() as cur:
            cur.execute("UPDATE index_meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(UsageError, match=r"newer datarun \(index schema 99; this one knows 2\): upgrade datarun"):
        open_index(index_url, tmp_path)


def test_a_run_record_of_a_newer_format_is_refused_and_nothing_is_applied(index: Index, store: CountingStore) -> None:
    write_version(store, run_doc("ok"))
    write_version(store, {**run_doc("future"), "format": 2})
    with pytest.raises(UsageError, match=r"run record format 2, newer than this datarun reads \(1\): upgrade datarun"):
        index.sync(store)
    assert index.count() == 0


def test_a_corrupt_change_names_its_key(index: Index, store: CountingStore) -> None:
    store.put_if_absent("runs/changes/" + "0" * 26 + "1.json", b"{not json")
    with pytest.raises(IntegrityError, match=r"run change `runs/changes/0+1\.json` is not JSON"):
        index.sync(store)


def test_an_index_follows_one_store_and_starts_over_for_another(index: Index, tmp_path: Path) -> None:
    one, two = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "two")
    write_version(one, run_doc("from-one"))
    write_version(two, run_doc("from-two"))
    index.sync(one)
    stats = index.sync(two)
    assert stats.rebuilt and _ids(index.query(None)) == ["from-two"]


def test_sync_on_azurite_is_one_list_when_up_to_date(index: Index, azurite_server: Azurite) -> None:
    bucket = azurite_server.new_bucket()
    try:
        store = CountingStore(azurite_server.store(bucket))
        docs = corpus(120)
        for doc in docs:
            write_version(store, doc)
        store.calls.clear()
        assert index.sync(store).applied == 120
        assert store.calls["read"] == 120
        store.calls.clear()
        assert index.sync(store).fetched == 0
        assert dict(store.calls) == {"list": 1}
        assert len(index.query("run.params.model.layers >= 3", top=None, include_hidden=True)) == sum(
            1 for d in docs if isinstance(d["params"].get("model"), dict) and d["params"]["model"]["layers"] >= 3
        )
    finally:
        azurite_server.drop_bucket(bucket)
