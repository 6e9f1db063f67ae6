"""A gc racing 8 concurrent uploads, each killed (SIGKILL) or left to finish at a random point,
over 50 rounds, on the local store and on Azurite. Every committed bundle must verify after
every round; an upload may be refused (its data was being swept) but never commits bad data.

The uploads are forked processes with their own index caches, as separate hosts would be.
Each round makes garbage the uploads dedup against (a bundle holding pooled files, deleted
before the round), which is the dangerous case: a writer reusing packs the sweep is taking.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from datarun.errors import ConflictError
from datarun.gc import lifecycle
from datarun.gc.check import check_store
from datarun.gc.collect import GcOptions, collect
from datarun.repo import Client
from datarun.store import LocalStore, ObjectStore
from tests.store.emulators import Azurite

ROUNDS = 50
UPLOADS = 8
OPTIONS = GcOptions(grace=0.0, commit_timeout=3.0, max_unused=1.0, workers=4)


def _open(spec: tuple[str, ...]) -> ObjectStore:
    """A store from a picklable description: the uploads are spawned, fresh processes."""
    if spec[0] == "local":
        return LocalStore(Path(spec[1]))
    from datarun.store.azure import AzureStore

    return AzureStore.from_url(spec[1], env={"AZURE_STORAGE_CONNECTION_STRING": spec[2]})


def _upload_child(spec: tuple[str, ...], cache: Path, tree: Path, out: Path) -> None:
    code = 0
    try:
        with Client(_open(spec), cache_dir=cache, workers=2) as client:
            try:
                result = client.upload("race", tree, "racing", use_hash_cache=False)
                out.write_text(result.bundle.id)
            except ConflictError as err:
                out.write_text(f"refused: {err}")
                code = 3
    except BaseException as err:
        out.write_text(f"error: {type(err).__name__}: {err}")
        code = 4
    os._exit(code)


def _tree(root: Path, rng: random.Random, pool: list[bytes]) -> Path:
    root.mkdir(parents=True)
    (root / "own.bin").write_bytes(rng.randbytes(rng.randint(1_000, 300_000)))
    for i in rng.sample(range(len(pool)), rng.randint(0, 3)):
        (root / f"pooled-{i}.bin").write_bytes(pool[i])
    return root


def _killer(procs: list[tuple[multiprocessing.process.BaseProcess, Path, bool, float]], started: float) -> None:
    for p, _out, kill, at in sorted(procs, key=lambda t: t[3]):
        if kill:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)


def _race(spec: tuple[str, ...], tmp: Path, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    # Spawned, not forked: a fork inherits locks that the parent's threads held at that moment.
    ctx = multiprocessing.get_context("spawn")
    pool = [rng.randbytes(rng.randint(300_000, 600_000)) for _ in range(8)]
    client = Client(_open(spec), cache_dir=tmp / "gc-cache", workers=2)
    client.create_repo("race")
    tally = {"rounds": 0, "committed": 0, "killed": 0, "refused": 0, "deleted_packs": 0, "rescued": 0}
    for rnd in range(ROUNDS):
        # Garbage the uploads will want to dedup against.
        bait = tmp / f"bait-{rnd}"
        bait.mkdir()
        for i in range(len(pool)):
            (bait / f"pooled-{i}.bin").write_bytes(pool[i])
        doomed = client.upload("race", bait, "bait", use_hash_cache=False).bundle
        lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "race", doomed.id))
        # And some of the older bundles go too.
        for old in client.list_bundles("race"):
            if rng.random() < 0.3:
                lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "race", old.id))
        procs = []
        for i in range(UPLOADS):
            tree = _tree(tmp / f"r{rnd}-u{i}", rng, pool)
            out = tmp / f"r{rnd}-u{i}.out"
            p = ctx.Process(target=_upload_child, args=(spec, tmp / f"cache-{i}", tree, out))
            p.start()
            # A spawned upload takes about a second to start, then a fraction of one to run.
            procs.append((p, out, rng.random() < 0.5, rng.uniform(0.2, 2.5)))
        k = threading.Thread(target=_killer, args=(procs, time.monotonic()))
        k.start()
        time.sleep(rng.uniform(0.0, 2.0))
        report = collect(client.meta, client.blobs, OPTIONS)
        k.join()
        for p, out, _kill, _at in procs:
            p.join(120)
            assert p.exitcode is not None, "an upload hung"
            text = out.read_text() if out.exists() else ""
            if p.exitcode == -signal.SIGKILL:
                tally["killed"] += 1
            elif p.exitcode == 3:
                tally["refused"] += 1
            else:
                assert p.exitcode == 0, text
                tally["committed"] += 1
        tally["deleted_packs"] += report.deleted_packs
        tally["rescued"] += report.rescued
        # Every committed bundle verifies, after every round: nothing live was deleted.
        for b in client.list_bundles("race"):
            verdict = client.verify(b)
            assert verdict.ok, (rnd, b.id, verdict.problems)
        tally["rounds"] += 1
        print(f"round {rnd}: {report.deleted_packs} packs swept, {report.rescued} rescued", flush=True)
    # A last gc with no writer left, then the whole store checks clean, bytes included.
    collect(client.meta, client.blobs, OPTIONS)
    result = check_store(client.meta, client.blobs, read_data=True)
    assert result.ok, [p.message for p in result.problems]
    client.close()
    return tally


def _print(name: str, tally: dict[str, int], seconds: float) -> None:
    print(f"\n{name}: {tally} in {seconds:.0f}s")


@pytest.mark.timeout(1200)
def test_gc_races_uploads_on_the_local_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    started = time.monotonic()
    tally = _race(("local", str(root)), tmp_path, seed=17)
    _print("local", tally, time.monotonic() - started)
    assert tally["rounds"] == ROUNDS
    assert tally["committed"] > 0 and tally["killed"] > 0 and tally["deleted_packs"] > 0


@pytest.mark.timeout(1800)
def test_gc_races_uploads_on_azurite(tmp_path: Path, azurite_server: Azurite) -> None:
    bucket = azurite_server.new_bucket()
    started = time.monotonic()
    try:
        spec = ("azurite", f"az://{bucket}/datarun", azurite_server.connection_string())
        tally = _race(spec, tmp_path, seed=71)
    finally:
        azurite_server.drop_bucket(bucket)
    _print("azurite", tally, time.monotonic() - started)
    assert tally["rounds"] == ROUNDS
    assert tally["committed"] > 0 and tally["killed"] > 0 and tally["deleted_packs"] > 0
