"""The bundle listing index (FORMAT.md §17) on a local folder and on Azurite: a list costs a
bounded number of requests, racing commits lose nothing, deletes drop out, old stores still list."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datarun import listing
from datarun.gc.lifecycle import delete_bundle, plan_bundle_delete
from datarun.repo import Client
from datarun.store import LocalStore, ObjectStore
from tests.store.counting import CountingStore
from tests.store.emulators import Azurite

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "store-format1"


@pytest.fixture(params=["local", "azurite"])
def meta(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: Azurite = request.getfixturevalue("azurite_server")
    bucket = server.new_bucket()
    yield server.store(bucket)
    server.drop_bucket(bucket)


def _upload(client: Client, src: Path, n: int) -> str:
    folder = src / f"b{n}"
    folder.mkdir(parents=True)
    (folder / "f.txt").write_text(f"bundle {n}\n")
    return client.upload("r", folder, f"m{n}", use_hash_cache=False).bundle.id


def test_racing_commits_are_all_listed_from_a_base_and_a_short_tail(
    meta: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 4)  # compactions race as often as commits do
    counting = CountingStore(meta)
    with Client(counting, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(lambda n: _upload(client, tmp_path / "src", n), range(40)))
        assert len(ids) == 40
        tail = [i.key for i in meta.list("listings/r/tail/")]
        assert meta.exists("listings/r/base.json")
        counting.calls.clear()
        listed = client.list_bundle_rows("r")
        assert [row[0] for row in listed] == sorted(ids)
        # One GET of the repo, one of the base, one LIST, and one GET per tail entry not yet folded.
        assert counting.calls["list"] == 1
        assert counting.calls["read"] <= 2 + len(tail)
        assert listed == sorted((b.id, b.created, b.message) for b in client.list_bundles("r"))
        # Folding the rest in loses nothing either.
        assert listing.BundleListing(meta, "r", client.get_repo("r").created).compact()
        assert [i.key for i in meta.list("listings/r/tail/")] == []
        assert [row[0] for row in client.list_bundle_rows("r")] == sorted(ids)


def test_a_deleted_bundle_leaves_the_listing(meta: ObjectStore, tmp_path: Path) -> None:
    with Client(meta, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        a, b = _upload(client, tmp_path / "src", 1), _upload(client, tmp_path / "src", 2)
        assert meta.exists("listings/r/base.json")
        delete_bundle(client, plan_bundle_delete(client, "r", a))
        assert [row[0] for row in client.list_bundle_rows("r")] == [b]
        c = _upload(client, tmp_path / "src", 3)
        assert [row[0] for row in client.list_bundle_rows("r")] == sorted([b, c])


def test_a_repo_created_again_does_not_inherit_the_old_listing(meta: ObjectStore, tmp_path: Path) -> None:
    with Client(meta, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        _upload(client, tmp_path / "src", 1)
        # What a repo delete leaves if it dies before cleaning up: records gone, listing kept.
        for info in list(meta.list("repos/r/")):
            meta.delete(info.key)
        client.create_repo("r")
        assert client.list_bundle_rows("r") == []


def test_a_store_without_a_listing_lists_its_records_then_gets_one(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    with Client(store, cache_dir=tmp_path / "cache") as client:
        [old] = [row[0] for row in client.list_bundle_rows("old")]
        assert not store.exists("listings/old/base.json")
        src = tmp_path / "src" / "x"
        src.mkdir(parents=True)
        (src / "y").write_text("new\n")
        new = client.upload("old", src, "after the index").bundle.id
        assert store.exists("listings/old/base.json")  # the first commit builds it from the records
        assert [row[0] for row in client.list_bundle_rows("old")] == sorted([old, new])
