"""The writers' half of the protocol, one interleaving at a time (the race test tries random ones).

A second client with its own cache plays a writer on another host: it syncs its index while the
bait packs exist, and a gc sweeps them before it commits.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from datarun.errors import ConflictError
from datarun.gc import lifecycle
from datarun.gc.collect import collect
from datarun.repo import Client
from datarun.store import LocalStore
from tests.gc.conftest import NOW, random_tree


@pytest.fixture
def other(client: Client, tmp_path: Path) -> Client:
    return Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "other-cache", workers=2)


def _bait(client: Client, tree: Path) -> str:
    client.create_repo("data")
    bait = client.upload("data", tree, "bait").bundle
    lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", bait.id))
    return next(iter(client.list_files(bait))).chunks[0].pack


def test_a_sweep_during_the_upload_makes_its_commit_refused(client: Client, other: Client, tmp_path: Path) -> None:
    tree = random_tree(tmp_path / "t")
    pack = _bait(client, tree)
    reports = []

    def sweep() -> None:  # after `other` synced and deduplicated against the bait, before its commit
        reports.append(collect(client.meta, client.blobs, NOW))

    with pytest.raises(ConflictError, match="garbage collection removed its manifest") as err:
        other.upload("data", tree, "reuses the bait", before_commit=sweep)
    assert reports[0].deleted_packs >= 1 and not client.blobs.exists(f"packs/{pack[:2]}/{pack}")
    assert "run the upload again" in str(err.value)
    assert client.list_bundles("data") == []
    assert not list(client.meta.list("gc/commits/")), "the announcement is withdrawn"
    again = other.upload("data", tree, "second try").bundle  # the rerun syncs and uploads afresh
    assert other.verify(again).ok


def test_a_plan_in_progress_refuses_a_commit_that_reuses_its_packs(
    client: Client, other: Client, tmp_path: Path
) -> None:
    tree = random_tree(tmp_path / "t")
    pack = _bait(client, tree)
    plan = {"format": 1, "id": "p1", "packs": [pack], "segments": [pack], "manifests": []}
    client.meta.put_if_absent("gc/plans/p1.json", orjson.dumps(plan))
    with pytest.raises(ConflictError, match=f"is deleting pack {pack}"):
        other.upload("data", tree, "reuses the bait")
    assert client.list_bundles("data") == []
    client.meta.delete("gc/plans/p1.json")
    assert other.verify(other.upload("data", tree, "after the sweep").bundle).ok


def test_an_unrelated_upload_commits_while_a_plan_exists(client: Client, tmp_path: Path) -> None:
    _bait(client, random_tree(tmp_path / "bait"))
    client.meta.put_if_absent("gc/plans/p1.json", orjson.dumps({"format": 1, "id": "p1", "packs": ["0" * 64]}))
    assert client.verify(client.upload("data", random_tree(tmp_path / "t"), "fresh").bundle).ok


def test_a_commit_announced_during_the_sweep_is_waited_for_and_its_data_kept(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    kept = client.upload("data", random_tree(tmp_path / "t"), "one").bundle
    key = f"repos/data/bundles/{kept.id}.json"
    record = client.meta.read(key)[0]
    client.meta.delete(key)  # now unreferenced: a candidate
    client.meta.put_if_absent(f"gc/commits/{kept.id}.json", b"{}")  # ... but a writer is committing it

    import threading

    def writer() -> None:  # commits while the collector waits, then withdraws its announcement
        import time

        time.sleep(0.5)
        client.meta.put_if_absent(key, record)
        client.meta.delete(f"gc/commits/{kept.id}.json")

    t = threading.Thread(target=writer)
    t.start()
    report = collect(client.meta, client.blobs, NOW)
    t.join()
    assert report.waited_commits == 1 and report.rescued >= 1 and report.deleted_packs == 0
    assert client.verify(client.get_bundle("data", kept.id)).ok


def test_a_sweep_of_reused_packs_only_is_caught_by_the_generation(
    client: Client, other: Client, tmp_path: Path
) -> None:
    tree = random_tree(tmp_path / "t")
    pack = _bait(client, tree)
    (tree / "new.bin").write_bytes(b"a different manifest, the same packs")

    def sweep() -> None:
        collect(client.meta, client.blobs, NOW)

    # With no grace the sweep takes this upload's own fresh manifest too; either way, no commit.
    with pytest.raises(ConflictError, match="garbage collection removed"):
        other.upload("data", tree, "reuses the bait", before_commit=sweep)
    assert client.list_bundles("data") == [] and not client.blobs.exists(f"packs/{pack[:2]}/{pack}")
