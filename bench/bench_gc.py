"""Garbage collection: datarun gc against restic prune on the same data, side by side.

    .venv/bin/python bench/bench_gc.py            # 20 bundles of 4 x 4 MiB, half deleted, 3 runs
    .venv/bin/python bench/bench_gc.py --small    # 10 bundles of 4 x 1 MiB

Each bundle holds random (incompressible) files of its own plus one file shared by every bundle,
so some packs stay partly live. Both tools get the same trees: datarun uploads each as a bundle
into a local store, restic backs each up as a snapshot into a local repo. Then half the bundles are
deleted (`bundle delete`; `restic forget`), and the collection is timed: `gc --grace 0
--max-unused 0.1` against `restic prune --max-unused 10%`. Reported over the runs as a range:
seconds, bytes freed, and freed bytes as a share of the deleted bundles' unique bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datarun.gc import lifecycle  # noqa: E402
from datarun.gc.collect import GcOptions, collect  # noqa: E402
from datarun.gc.repack import repack_packs  # noqa: E402
from datarun.repo import Client  # noqa: E402
from datarun.store import LocalStore  # noqa: E402


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_trees(work: Path, bundles: int, files: int, size: int) -> tuple[list[Path], int]:
    shared = os.urandom(size)
    trees = []
    for b in range(bundles):
        tree = work / f"tree-{b}"
        tree.mkdir(parents=True)
        for f in range(files):
            (tree / f"own-{f}.bin").write_bytes(os.urandom(size))
        (tree / "shared.bin").write_bytes(shared)
        trees.append(tree)
    return trees, files * size  # unique bytes per bundle


def run_datarun(work: Path, trees: list[Path]) -> tuple[float, int]:
    root = work / "datarun-store"
    with Client(LocalStore(root), cache_dir=work / "datarun-cache", workers=4) as client:
        client.create_repo("bench")
        ids = [client.upload("bench", t, t.name, use_hash_cache=False).bundle.id for t in trees]
        for bundle_id in ids[::2]:
            lifecycle.delete_bundle(client, lifecycle.plan_bundle_delete(client, "bench", bundle_id))
        before = tree_size(root)
        started = time.perf_counter()
        collect(client.meta, client.blobs, GcOptions(grace=0.0, max_unused=0.1), repack=repack_packs)
        # Repacked packs go at the next run (after the grace period): count what a second run frees too.
        collect(client.meta, client.blobs, GcOptions(grace=0.0, max_unused=0.1), repack=repack_packs)
        seconds = time.perf_counter() - started
        for bundle_id in ids[1::2]:
            assert client.verify(client.get_bundle("bench", bundle_id)).ok
    return seconds, before - tree_size(root)


def run_restic(work: Path, trees: list[Path]) -> tuple[float, int]:
    repo = work / "restic-repo"
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_CACHE_DIR": str(work / "rc"),
    }

    def restic(*args: str) -> str:
        proc = subprocess.run(["restic", "--quiet", *args], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"restic {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    restic("init")
    ids = []
    for t in trees:
        out = restic("backup", "--json", "--host", "bench", str(t))
        summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
        ids.append(summary["snapshot_id"])
    restic("forget", *ids[::2])
    before = tree_size(repo)
    started = time.perf_counter()
    restic("prune", "--max-unused", "10%")
    seconds = time.perf_counter() - started
    return seconds, before - tree_size(repo)


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)} - {fmt.format(hi)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bundles, files, size = (10, 4, 1 << 20) if args.small else (20, 4, 4 << 20)
    if shutil.which("restic") is None:
        print("restic is not installed (apt-get install restic); running datarun alone", file=sys.stderr)
    results: dict[str, list[tuple[float, int]]] = {"datarun": [], "restic": []}
    unique = 0
    for _ in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="bench-gc-"))
        try:
            trees, per_bundle = make_trees(work, bundles, files, size)
            unique = per_bundle * len(trees[::2])
            results["datarun"].append(run_datarun(work, trees))
            if shutil.which("restic"):
                results["restic"].append(run_restic(work, trees))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{bundles} bundles of {files} x {size >> 20} MiB + 1 shared file; half deleted; {args.runs} runs")
    print(f"unique bytes of the deleted bundles: {unique / 2**20:.0f} MiB\n")
    print("| tool | collection time | freed | freed / unique bytes of the deleted |")
    print("|---|---|---|---|")
    for tool, rows in results.items():
        if not rows:
            continue
        secs = [r[0] for r in rows]
        freed = [r[1] / 2**20 for r in rows]
        share = [r[1] / unique * 100 for r in rows]
        print(f"| {tool} | {span(secs, '{:.2f} s')} | {span(freed, '{:.0f} MiB')} | {span(share, '{:.0f} %')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
