"""How fast can the mount check chunks of a local pack whose pages are evicted? No FUSE here:
only the map, the page-in and BLAKE3, the floor under the mount's cold sequential read.

    .venv/bin/python bench/bench_mapped_hash.py [--mib 256] [--runs 2]

Writes random packs, evicts them (posix_fadvise DONTNEED; maps are closed first, since mapped
pages are not dropped), then hashes every 1 MiB slice through a fresh mmap, with and without a
MADV_WILLNEED per slice, with MADV_SEQUENTIAL on the map, on 1, 2 and 4 threads. The peer is
`cat` of the same evicted packs.
"""

from __future__ import annotations

import argparse
import mmap
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

MiB = 1 << 20
PACK = 32 * MiB


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def hash_all(paths: list[Path], threads: int, mode: str) -> float:
    """GB/s over every 1 MiB slice of ``paths``, freshly mapped after eviction."""
    evict(paths)
    maps: list[mmap.mmap] = []
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        os.close(fd)
        if mode == "sequential":
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        maps.append(mapped)
    slices = [(m, off) for m in maps for off in range(0, len(m), MiB)]

    def check(item: tuple[mmap.mmap, int]) -> bytes:
        mapped, off = item
        if mode == "willneed":
            mapped.madvise(mmap.MADV_WILLNEED, off, min(MiB, len(mapped) - off))
        return blake3.blake3(memoryview(mapped)[off : off + MiB]).digest()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(check, slices))
    seconds = time.perf_counter() - started
    size = sum(len(m) for m in maps)
    for mapped in maps:
        mapped.close()
    return size / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datarun-bench-hash-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        paths = []
        for i in range(max(1, args.mib * MiB // PACK)):
            path = Path(tmp) / f"pack{i:03d}"
            path.write_bytes(os.urandom(PACK))
            paths.append(path)
        size = len(paths) * PACK
        rows: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for mode in ("plain", "sequential", "willneed"):
                for threads in (1, 2, 4):
                    rows.setdefault(f"{mode}, {threads} thread(s)", []).append(hash_all(paths, threads, mode))
            evict(paths)
            started = time.perf_counter()
            subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
            rows.setdefault("peer: `cat` of the packs", []).append(size / (time.perf_counter() - started) / 1e9)
    print(f"mapped-pack check, {size // MiB} MiB evicted, {os.cpu_count()} CPUs, {args.runs} runs\n")
    print("| map + hash | GB/s (range over runs) |\n|---|---|")
    for name, rates in rows.items():
        print(f"| {name} | {min(rates):.2f}-{max(rates):.2f} |")


if __name__ == "__main__":
    main()
