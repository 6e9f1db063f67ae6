"""How fast a mount answers EIO when a chunk cannot be had, against a read that succeeds.

    .venv/bin/python bench/bench_mount_errors.py              # local store, Azurite, fake-gcs-server
    .venv/bin/python bench/bench_mount_errors.py --reps 9     # more repetitions per row
    .venv/bin/python bench/bench_mount_errors.py --json out.json

Every row reads through ``BundleOperations.read``, the handler the kernel calls for a mounted
file, with a fresh ``ChunkSource`` (cold caches) per repetition, and the store wrapped in a
counter (``tests/store/counting.py``) that also hides ``local_path``, so even the local store is
read the way a cloud store is (no mapped packs). Per store:

- present: a one-chunk file whose pack is there (the peer: what one store round trip costs);
- missing pack: the same kind of file after its pack was deleted from the store;
- unreachable (Azurite only): the endpoint is a closed port, so every attempt is refused and
  the store's own retry policy (store/retry.py, 5 attempts by default) decides the wait.

The figures are milliseconds from the read call to its answer (median of ``--reps``) and the
store calls it made. Azurite and fake-gcs-server rows need ``scripts/install-emulators.sh``;
without them those rows are left out and the table says so.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyfuse3
import trio

from datarun.mount.chunks import ChunkSource
from datarun.mount.inodes import ROOT_INODE, InodeTable
from datarun.mount.ops import BundleOperations
from datarun.repo import Client
from datarun.store import LocalStore, ObjectStore
from tests.store.counting import CountingStore
from tests.store.emulators import (
    Azurite,
    Emulator,
    FakeGCS,
    azurite_missing,
    closed_port,
    gcs_missing,
)

CTX = pyfuse3.RequestContext()


@dataclass
class Row:
    store: str
    case: str
    ms_median: float
    ms_min: float
    ms_max: float
    store_calls: float
    answer: str


@dataclass
class Fixture:
    client: Client
    table: InodeTable
    work: Path


def _prepare(store: ObjectStore, work: Path) -> Fixture:
    """A bundle of two one-chunk files in two packs, the pack of `gone.bin` then deleted."""
    client = Client(store, cache_dir=work / "client-cache")
    client.create_repo("errors")
    rng = random.Random(7)
    first = work / "first"
    first.mkdir()
    (first / "gone.bin").write_bytes(rng.randbytes(300 << 10))  # random: stored raw, one chunk
    client.upload("errors", first, "the pack to lose")
    lost = {info.key for info in store.list("packs/")}
    both = work / "both"
    both.mkdir()
    (both / "gone.bin").write_bytes((first / "gone.bin").read_bytes())
    (both / "here.bin").write_bytes(rng.randbytes(300 << 10))
    bundle = client.upload("errors", both, "one pack present, one lost").bundle
    for key in lost:
        store.delete(key)
    table = InodeTable.build(client.list_records(bundle), work / "inodes.sqlite")
    return Fixture(client, table, work)


def _read_once(store: ObjectStore, table: InodeTable, name: str) -> tuple[float, int, str]:
    counted = CountingStore(store)
    source = ChunkSource(counted, None, memory_bytes=16 << 20, workers=2)
    ops = BundleOperations(table, source, None, prefetch=0)
    try:
        inode = trio.run(ops.lookup, ROOT_INODE, name.encode(), CTX).st_ino
        fh = trio.run(ops.open, inode, os.O_RDONLY, CTX).fh
        started = time.perf_counter()
        try:
            data = trio.run(ops.read, fh, 0, 4096)
            answer = f"{len(data)} bytes"
        except pyfuse3.FUSEError as err:
            answer = errno.errorcode.get(err.errno, str(err.errno))
        elapsed = time.perf_counter() - started
    finally:
        source.close()
    return elapsed * 1000, sum(counted.calls.values()), answer


def _measure(label: str, case: str, store: ObjectStore, table: InodeTable, name: str, reps: int) -> Row:
    runs = [_read_once(store, table, name) for _ in range(reps)]
    ms = [r[0] for r in runs]
    answers = sorted({r[2] for r in runs})
    return Row(
        label,
        case,
        statistics.median(ms),
        min(ms),
        max(ms),
        statistics.median(r[1] for r in runs),
        "/".join(answers),
    )


@contextmanager
def _emulated(kind: type[Emulator], work: Path) -> Iterator[Emulator]:
    emulator = kind(work)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def _store_rows(label: str, store: ObjectStore, work: Path, reps: int) -> list[Row]:
    fixture = _prepare(store, work)
    try:
        return [
            _measure(label, "present", store, fixture.table, "here.bin", reps),
            _measure(label, "missing pack", store, fixture.table, "gone.bin", reps),
        ]
    finally:
        fixture.table.close()


def run(reps: int, say: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-mount-errors-") as tmp:
        root = Path(tmp)
        local = root / "local"
        local.mkdir()
        rows += _store_rows("local", LocalStore(local / "store"), local, reps)
        missing = azurite_missing()
        if missing:
            say(f"azurite rows left out: {missing}")
        else:
            work = root / "azurite"
            work.mkdir()
            with _emulated(Azurite, work) as azurite:
                bucket = azurite.new_bucket()
                rows += _store_rows("azurite", azurite.store(bucket), work, reps)
                # The same bundle, read through an endpoint nobody answers on.
                table = InodeTable.open_cached(work / "inodes.sqlite")
                assert table is not None
                try:
                    unreachable = azurite.store(bucket, port=closed_port())
                    rows.append(_measure("azurite", "unreachable", unreachable, table, "here.bin", reps))
                finally:
                    table.close()
        missing = gcs_missing()
        if missing:
            say(f"fake-gcs-server rows left out: {missing}")
        else:
            work = root / "gcs"
            work.mkdir()
            with _emulated(FakeGCS, work) as gcs:
                rows += _store_rows("fake-gcs-server", gcs.store(gcs.new_bucket()), work, reps)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| store | read of | ms (median) | ms (min-max) | store calls | answer |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.store} | {r.case} | {r.ms_median:.1f} | {r.ms_min:.1f}-{r.ms_max:.1f} | "
            f"{r.store_calls:g} | {r.answer} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per row (default 5)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    logging.getLogger("datarun.mount").setLevel(logging.CRITICAL)  # each EIO logs its cause; the table is the output
    rows = run(args.reps, lambda text: print(f"# {text}", file=sys.stderr))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
