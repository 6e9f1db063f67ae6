"""Garbage collection on a real local store: what goes, what stays, and how much comes back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from datarun.errors import ConflictError
from datarun.gc import lifecycle
from datarun.gc.collect import GcOptions, GcReport, collect
from datarun.gc.repack import repack_packs
from datarun.repo import Client
from tests.gc.conftest import NOW, random_tree, store_bytes


def _report(client: Client, options: GcOptions = NOW, repack: bool = False) -> GcReport:
    return collect(client.meta, client.blobs, options, repack=repack_packs if repack else None)


def test_gc_after_deleting_half_frees_90_percent_of_their_unique_bytes(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    bundles = [client.upload("data", random_tree(tmp_path / f"t{i}", files=2), f"b{i}").bundle for i in range(10)]
    root = tmp_path / "store"
    before = store_bytes(root, "packs") + store_bytes(root, "manifests")
    unique = sum(b.total_size for b in bundles[::2])  # random data: a bundle's bytes are all its own
    for b in bundles[::2]:
        lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", b.id))
    report = _report(client)
    freed = before - store_bytes(root, "packs") - store_bytes(root, "manifests")
    assert report.freed_bytes == freed
    assert freed >= 0.9 * unique, (freed, unique)
    for b in bundles[1::2]:
        assert client.verify(b).ok
    for b in bundles[::2]:
        assert not client.meta.exists(f"manifests/{b.manifest[:2]}/{b.manifest}")
    print(f"freed {freed} of {unique} unique bytes ({freed / unique:.1%})")


def test_grace_keeps_young_garbage_until_a_mark_is_old_enough(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    b = client.upload("data", random_tree(tmp_path / "t"), "one").bundle
    lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", b.id))
    first = _report(client, replace(NOW, grace=3600.0))
    assert first.deleted_packs == 0 and first.kept_young == first.unreferenced_packs + first.unreferenced_manifests
    assert first.reclaimable_after is not None
    packs_left = list(client.blobs.list("packs/"))
    assert packs_left, "grace must keep the packs"
    # A mark written now makes them eligible to a gc whose grace is shorter than the mark's age.
    second = _report(client, replace(NOW, grace=1e-6))
    assert second.deleted_packs == len(packs_left)
    assert not list(client.blobs.list("packs/")) and not list(client.blobs.list("index/"))


def test_dry_run_changes_nothing(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    b = client.upload("data", random_tree(tmp_path / "t"), "one").bundle
    lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", b.id))
    keys = sorted(i.key for i in client.meta.list(""))
    report = _report(client, replace(NOW, dry_run=True))
    assert report.deleted_packs >= 1 and report.freed_bytes > 0
    assert sorted(i.key for i in client.meta.list("")) == keys


def test_shared_chunks_stay_while_one_bundle_uses_them(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    tree = random_tree(tmp_path / "t")
    first = client.upload("data", tree, "one").bundle
    second = client.upload("data", tree, "same data again").bundle  # dedups completely
    lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", first.id))
    report = _report(client)
    assert report.deleted_packs == 0
    assert client.verify(second).ok


def test_repack_only_past_the_threshold(client: Client, tmp_path: Path) -> None:
    client.create_repo("data")
    tree = random_tree(tmp_path / "t", files=4)
    both = client.upload("data", tree, "four files").bundle
    (tree / "f0.bin").unlink()
    (tree / "f1.bin").unlink()
    (tree / "f2.bin").unlink()
    keep = client.upload("data", tree, "one file").bundle  # its chunks live in the first bundle's pack
    lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "data", both.id))
    packs_before = {i.key for i in client.blobs.list("packs/")}
    kept = _report(client, replace(NOW, max_unused=0.9), repack=True)  # 75% dead: under the bar
    assert kept.repacked == 0 and {i.key for i in client.blobs.list("packs/")} == packs_before
    done = _report(client, replace(NOW, max_unused=0.5), repack=True)
    assert done.repacked == 1 and done.repack_freed_bytes > 0
    swapped = client.get_bundle("data", keep.id)
    assert swapped.manifest != keep.manifest
    assert client.verify(swapped).ok
    after = _report(client)  # the old pack is unreferenced now and goes
    assert after.deleted_packs == 1
    assert client.verify(client.get_bundle("data", keep.id)).ok
    total = sum(i.size for i in client.blobs.list("packs/"))
    assert total < 0.3 * sum(1 for _ in packs_before) * 4 * 200_000


def test_a_second_gc_is_refused_while_one_holds_the_lock(client: Client) -> None:
    client.meta.put_if_absent("gc/lock.json", b'{"by": "elsewhere:1", "time": 0}')
    with pytest.raises(ConflictError, match="another gc"):
        _report(client)


def test_a_dead_collectors_plan_is_dropped_and_the_generation_moves(client: Client, tmp_path: Path) -> None:
    from datarun.gc.guard import read_generation

    client.create_repo("data")
    client.upload("data", random_tree(tmp_path / "t"), "one")
    client.meta.put_if_absent("gc/plans/dead.json", b'{"format": 1, "id": "dead", "packs": []}')
    before = read_generation(client.meta)
    _report(client)
    assert not list(client.meta.list("gc/plans/")) and read_generation(client.meta) == before + 1
