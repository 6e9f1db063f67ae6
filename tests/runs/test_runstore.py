"""Run records in a store: versions written create-only, CAS retries that lose nothing, the feed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from datarun.errors import ConflictError, IntegrityError, NotFoundError, UsageError
from datarun.ids import new_ksuid
from datarun.repo import Client
from datarun.runs import CHANGES, BundleLink, Run, RunStore, record_key, stable_run_id
from datarun.store import LocalStore, MemoryStore, ObjectStore


@pytest.fixture(params=["memory", "local"])
def meta(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    store = MemoryStore(secrets.token_hex(4)) if request.param == "memory" else LocalStore(tmp_path / "store")
    yield store
    store.close()


def _new(store: RunStore, **changes: object) -> Run:
    run = Run(id=store.new_id(), start="2023-06-09T14:28:56.000000Z", title="t", params={"lr": 0.1})
    return store.create(replace(run, **changes))  # type: ignore[arg-type]


def test_create_get_and_every_version_in_the_layout(meta: ObjectStore) -> None:
    store = RunStore(meta, author="ada", host="h1")
    run = _new(store)
    assert (run.version, run.author, run.host) == (1, "ada", "h1") and run.updated
    store.tag(run.id, ("a",))
    store.annotate(run.id, {"k": "v"})
    latest = store.set_hidden(run.id, True)
    assert latest.version == 4 and latest.tags == ("a",) and latest.annotations == {"k": "v"} and latest.hidden
    assert store.get(run.id) == latest
    assert store.get(run.id, version=1) == run
    assert [v.version for v in store.history(run.id)] == [1, 2, 3, 4]
    keys = [i.key for i in meta.list("runs/")]
    assert [k for k in keys if k.startswith("runs/records/")] == [record_key(run.id, v) for v in (1, 2, 3, 4)]
    # The feed: one change per version, in write order, each the full document of that version.
    feed = [orjson.loads(meta.read(k)[0]) for k in keys if k.startswith(CHANGES)]
    assert [d["version"] for d in feed] == [1, 2, 3, 4]
    assert feed[-1] == latest.to_json()
    assert [r.version for r in store.changes()] == [1, 2, 3, 4]
    second_key = [k for k in keys if k.startswith(CHANGES)][1]
    assert [r.version for r in store.changes(after=second_key)] == [3, 4]


def test_an_update_that_changes_nothing_writes_no_version(meta: ObjectStore) -> None:
    store = RunStore(meta)
    run = _new(store, tags=("a",))
    assert store.tag(run.id, ("a",)) == run
    assert len(store.history(run.id)) == 1


def test_a_lost_race_re_applies_the_change_on_top_of_the_winner(meta: ObjectStore) -> None:
    store = RunStore(meta)
    rival = RunStore(meta)
    run = _new(store)
    calls = []

    def add_mine(current: Run) -> Run:
        calls.append(current.version)
        if len(calls) == 1:
            rival.tag(run.id, ("theirs",))  # another writer stores version 2 between our read and write
        return current.with_tags(("mine",))

    final = store.update(run.id, add_mine)
    assert calls == [1, 2], "re-read after losing, applied again to the winner's version"
    assert final.version == 3 and set(final.tags) == {"mine", "theirs"}
    assert [v.tags for v in store.history(run.id)] == [(), ("theirs",), ("theirs", "mine")]


def test_bounded_retries_end_in_a_conflict_error(meta: ObjectStore) -> None:
    store = RunStore(meta)
    rival = RunStore(meta)
    run = _new(store)
    n = iter(range(100))

    def always_loses(current: Run) -> Run:
        rival.annotate(run.id, {"rival": str(next(n))})
        return current.with_tags(("mine",))

    with pytest.raises(ConflictError, match="updated by other writers 3 times in a row"):
        store.update(run.id, always_loses, retries=2)
    assert "mine" not in store.get(run.id).tags
    assert len(store.history(run.id)) == 4, "only the rival's three versions: nothing half-written"


def test_create_twice_and_unknown_ids(meta: ObjectStore) -> None:
    store = RunStore(meta)
    run = _new(store)
    with pytest.raises(ConflictError, match=f"run `{run.id}` exists already"):
        store.create(run)
    ghost = new_ksuid()
    with pytest.raises(NotFoundError, match=rf"run `{ghost}` not found .*datarun run list"):
        store.get(ghost)
    with pytest.raises(NotFoundError, match="has no version 7; it has versions 1 to 1"):
        store.get(run.id, version=7)
    with pytest.raises(UsageError, match="is not a run id"):
        store.get("../../etc")
    with pytest.raises(UsageError, match="invalid repo name"):
        store.finish(run.id, "Succeeded", 0, (BundleLink("o", "Bad Repo", new_ksuid()),))


def test_a_record_under_the_wrong_key_or_corrupt_is_an_integrity_error(meta: ObjectStore) -> None:
    store = RunStore(meta)
    run = _new(store)
    meta.put(record_key(run.id, 2), orjson.dumps(run.to_json()))  # says version 1, stored as 2
    with pytest.raises(IntegrityError, match=r"holds run .* version 1"):
        store.get(run.id)
    meta.put(record_key(run.id, 2), b"{not json")
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.history(run.id)


def test_stable_ids_sort_by_time_and_repeat() -> None:
    a = stable_run_id(1_700_000_000.0, "az://c/20230609-142856-x/")
    assert a == stable_run_id(1_700_000_000.0, "az://c/20230609-142856-x/")
    assert a != stable_run_id(1_700_000_000.0, "az://c/20230609-142856-y/")
    assert a < stable_run_id(1_700_000_001.0, "az://c/20230609-142856-x/")


def test_client_runs_is_bound_to_the_metadata_store_and_checks_its_format(tmp_path: Path) -> None:
    meta = LocalStore(tmp_path / "meta")
    client = Client(meta, LocalStore(tmp_path / "blobs"), cache_dir=tmp_path / "cache", author=("Ada", "ada@x.org"))
    run = client.runs.create(Run(id=new_ksuid(), start="2023-06-09T14:28:56Z"))
    assert run.author == "Ada <ada@x.org>"
    assert meta.exists(record_key(run.id, 1)) and meta.exists("datarun-store.json")
    assert not (tmp_path / "blobs" / "runs").exists()
    meta.put("datarun-store.json", orjson.dumps({"format": "datarun-store", "version": 99}))
    fresh = Client(meta, cache_dir=tmp_path / "cache")
    with pytest.raises(UsageError, match=r"uses format v99.*Upgrade datarun"):
        fresh.runs.get(run.id)
