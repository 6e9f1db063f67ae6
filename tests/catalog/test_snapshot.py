"""Run snapshots (``Index.compact``): a new index reads one object and the feed after it, and gets
exactly what a sync of the whole feed gets; a writer racing the compaction loses nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from datarun.catalog import Index, open_index
from datarun.errors import IntegrityError
from datarun.store.base import ObjectStore
from tests.catalog.writer import corpus, run_doc, write_version
from tests.store.counting import CountingStore
from tests.store.emulators import Azurite


def _state(index: Index) -> list[tuple[str, int, bytes]]:
    """Every run the index answers with, its version and document (hidden ones included)."""
    docs = index.query(None, top=None, include_hidden=True)
    return sorted((str(d["id"]), int(d["version"]), orjson.dumps(d, option=orjson.OPT_SORT_KEYS)) for d in docs)


def _fresh(tmp_path: Path, name: str) -> Index:
    return open_index(f"sqlite://{tmp_path / name}.sqlite", tmp_path)


@pytest.fixture
def azure(azurite_server: Azurite) -> Any:
    bucket = azurite_server.new_bucket()
    yield azurite_server.store(bucket)
    azurite_server.drop_bucket(bucket)


def test_snapshot_then_tail_equals_a_full_sync_on_azurite(azure: ObjectStore, tmp_path: Path) -> None:
    docs = corpus(150)
    for doc in docs:
        write_version(azure, doc)
    with _fresh(tmp_path, "compactor") as compactor:
        key = compactor.compact(azure)
    assert key.startswith("runs/snapshots/") and key.endswith(".jsonl.zst")
    # The tail: new runs and newer versions of runs in the snapshot, after the compaction.
    for doc in docs[:20]:
        write_version(azure, {**doc, "version": 2, "title": "changed after the snapshot"})
    tail = [{**d, "id": f"tail{i:05d}"} for i, d in enumerate(corpus(30, seed=99))]
    for doc in tail:
        write_version(azure, doc)
    counted = CountingStore(azure)
    with _fresh(tmp_path, "from-snapshot") as fast, _fresh(tmp_path, "full") as full:
        stats = fast.sync(counted)
        reads = counted.calls["read"]
        full.sync(azure, snapshot=False)
        assert _state(fast) == _state(full)
        assert len(_state(fast)) == 180
        assert {d["title"] for d in fast.query("run.version = 2", top=None, include_hidden=True)} == {
            "changed after the snapshot"
        }
    # One read for the snapshot, then only the changes written after it (its window's keys are known).
    assert reads == 1 + 20 + 30, counted.calls
    assert stats.applied == 150 + 20 + 30 and stats.rebuilt


def test_a_writer_racing_the_compaction_loses_nothing(azure: ObjectStore, tmp_path: Path) -> None:
    for doc in corpus(80):
        write_version(azure, doc)
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set() or n < 10:
            doc = run_doc(f"racer-{n:04d}", params={"n": n})
            write_version(azure, doc)
            written.append(doc["id"])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with _fresh(tmp_path, "compactor") as compactor:
            compactor.compact(azure)
            compactor.compact(azure)  # a second snapshot, later, while the writer still writes
    finally:
        stop.set()
        thread.join()
    with _fresh(tmp_path, "from-snapshot") as fast, _fresh(tmp_path, "full") as full:
        fast.sync(azure)
        full.sync(azure, snapshot=False)
        assert _state(fast) == _state(full)
        got = {d["id"] for d in fast.query("STARTSWITH(run.id, 'racer-')", top=None)}
        assert got == set(written) and len(written) >= 10


def test_a_store_without_snapshots_syncs_from_the_feed_and_a_corrupt_one_is_named(
    tmp_path: Path,
) -> None:
    from datarun.store import LocalStore

    store = CountingStore(LocalStore(tmp_path / "store"))
    for doc in corpus(10):
        write_version(store, doc)
    with _fresh(tmp_path, "old") as old:
        assert old.sync(store).applied == 10  # an older store: no snapshot, the whole feed
    store.put_if_absent(f"runs/snapshots/{'Z' * 27}.jsonl.zst", b"not zstd")
    with (
        _fresh(tmp_path, "new") as new,
        pytest.raises(IntegrityError, match=r"run snapshot `runs/snapshots/Z+\.jsonl\.zst` is corrupt.*delete it"),
    ):
        new.sync(store)
