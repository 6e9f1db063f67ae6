"""Listing benchmark: a repo of many bundles, on a local store and on Azurite.

    .venv/bin/python bench/bench_listing.py                  # 100,000 bundles, 1,000 labels
    .venv/bin/python bench/bench_listing.py --bundles 5000   # a smoke run

One real bundle is uploaded; the others are copies of its record under new ids, written straight
into the store in parallel (seeding through `bundle upload` would take hours and measure uploads,
not listings), and folded into the listing index by one compaction, as the commits would have
been; then one more real upload commits on top of it. Then, as fresh
processes, three times each: `datarun bundle list`, `datarun label list` and `datarun bundle get
--label`. DVC has no equivalent of any of the three: it keeps no
registry of versions of its own (versions are git commits and tags), so there is no peer column.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datarun.ids import new_ksuid  # noqa: E402
from datarun.layout import bundle_key  # noqa: E402
from datarun.listing import BundleListing, row_of  # noqa: E402
from datarun.records import dumps  # noqa: E402
from datarun.repo import Client  # noqa: E402
from datarun.store import LocalStore, ObjectStore  # noqa: E402
from tests.store.emulators import Azurite  # noqa: E402


def seed(store: ObjectStore, work: Path, bundles: int, labels: int) -> None:
    src = work / "src"
    src.mkdir(parents=True)
    (src / "f.txt").write_text("one file\n")
    with Client(store, cache_dir=work / "cache") as client:
        client.create_repo("big")
        first = client.upload("big", src, "the real one").bundle
        record = first.to_json()
        start = time.time() - bundles

        def put(i: int) -> dict[str, Any]:
            bundle_id = new_ksuid(start + i)
            copy = {**record, "id": bundle_id, "message": f"copy {i}"}
            store.put(bundle_key("big", bundle_id), dumps(copy))
            return copy

        with ThreadPoolExecutor(32) as pool:
            copies = list(pool.map(put, range(bundles - 2)))
            ids = [c["id"] for c in copies]
            list(pool.map(lambda n: client.set_label("big", f"l{n:05d}", ids[n * 7 % len(ids)]), range(labels)))
        # The copies bypassed the commit path. Had each been committed, compaction would have
        # folded it into the base every 64 commits; fold them all into the real base in one
        # compaction instead (the records are in hand), rather than making the next commit
        # rebuild the base with one GET per record, which is the path for stores older than
        # the index and took longer on Azurite than the seeding itself.
        listing = BundleListing(store, "big", client.get_repo("big").created)
        seen = listing._look()
        assert seen.base is not None, "the first upload wrote no listing base"
        folded = {**seen.base, **{c["id"]: row_of(c) for c in copies}}
        if not listing.compact(replace(seen, base=folded)):
            raise SystemExit("the seeding compaction lost a race: nothing else writes this store")
        (src / "f.txt").write_text("the last one\n")
        t = time.perf_counter()
        client.upload("big", src, "a commit on top of the big listing")
        print(f"# one more commit on top: {time.perf_counter() - t:.1f} s", file=sys.stderr)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr}")
    return seconds, proc.stdout


def wait_for_quiet(load: float | None) -> None:
    """With ``--quiet-load``: seed while something else runs (under `nice`), time only once the
    1-minute load average has fallen below ``load``."""
    if load is None:
        return
    while os.getloadavg()[0] >= load:
        print(f"# load {os.getloadavg()[0]:.2f}: waiting for < {load} before timing", file=sys.stderr, flush=True)
        time.sleep(30)


def bench(name: str, url: str, env: dict[str, str], datarun: str, bundles: int, labels: int) -> list[str]:
    dr = [datarun, "-q", "--store", url]
    rows = []
    for what, args, expect in (
        ("bundle list", ["bundle", "list", "--repo", "big"], bundles),
        ("label list", ["label", "list", "--repo", "big"], labels),
        ("bundle get --label", ["bundle", "get", "--repo", "big", "--label", "l00001"], None),
    ):
        if what == "bundle get --label":
            # The first `get` of a fresh client cache builds its lineage graph (one listing of
            # `repos/`, the bundles' edges from the listing rows); every later one only follows it.
            seconds, _ = timed([*dr, *args], env)
            rows.append(f"| {name} | {what}, first (builds the lineage graph) | {seconds:.2f} | - | - | - |")
        runs = []
        for _ in range(3):
            seconds, out = timed([*dr, *args], env)
            if expect is not None and len(out.strip().splitlines()) != expect:
                raise SystemExit(f"{what} printed {len(out.strip().splitlines())} lines, not {expect}")
            runs.append(seconds)
        bar = "< 2 s" if what == "bundle list" and name == "azurite" else "-"
        ok = "yes" if bar == "-" or max(runs) < 2 else "NO"
        rows.append(
            f"| {name} | {what} | {min(runs):.2f}-{max(runs):.2f} | none (DVC has no registry) | {bar} | {ok} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1_000)
    parser.add_argument("--only", choices=["local", "azurite"], default=None)
    parser.add_argument("--datarun", default=str(ROOT / ".venv" / "bin" / "datarun"))
    parser.add_argument("--quiet-load", type=float, default=None, help="time only below this 1-minute load average")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datarun-bench-listing-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATARUN_", "AZURE_"))},
        "DATARUN_CACHE_DIR": str(work / "cli-cache"),
        "DATARUN_CONFIG": str(work / "none.yaml"),
        "DATARUN_HOME": str(work / "home"),
    }
    rows: list[str] = []
    if args.only in (None, "local"):
        t = time.perf_counter()
        seed(LocalStore(work / "local"), work / "l", args.bundles, args.labels)
        print(f"# local: seeded in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        wait_for_quiet(args.quiet_load)
        rows += bench("local", f"file://{work / 'local'}", env, args.datarun, args.bundles, args.labels)
    if args.only in (None, "azurite"):
        server = Azurite(work / "azurite", in_memory=True)  # see Azurite: its disk table does not scale
        server.start()
        try:
            bucket = server.new_bucket()
            t = time.perf_counter()
            seed(server.store(bucket), work / "a", args.bundles, args.labels)
            print(f"# azurite: seeded in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            wait_for_quiet(args.quiet_load)
            rows += bench(
                "azurite", f"az://{bucket}/datarun", {**env, **server.env()}, args.datarun, args.bundles, args.labels
            )
        finally:
            server.stop()
    print(
        f"\n{args.bundles} bundles, {args.labels} labels in one repo; fresh processes, 3 runs each (min-max s); "
        f"load average when done {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    print("| store | command | datarun (s) | peer | bar | pass |")
    print("|---|---|---:|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
