"""Run record updates (create-only version N+1) next to the other compare-and-swap datarun has.

Per update, on a local store and on Azurite: a run update (`RunStore.tag`: list the versions, read
the latest, create N+1, create its change), a label move (`Client.set_label`: read, `put_if_match`,
history) and the bare primitive both are built on (one `put_if_absent`). Then two processes tag one
run at once: the wall time for both to land every update, and how many races were lost and retried.

    .venv/bin/python bench/bench_run_updates.py                 # local and Azurite, 3 repetitions
    .venv/bin/python bench/bench_run_updates.py --only local --updates 50 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datarun.ids import new_ksuid
from datarun.repo import Client
from datarun.runs import Run, RunStore
from datarun.store import LocalStore, ObjectStore
from tests.store.emulators import Azurite, azurite_missing

RACER = textwrap.dedent(
    """
    import os, sys, time
    from datarun.errors import PreconditionFailed
    from datarun.runs import RunStore
    from datarun.store import open_store

    class Counting(RunStore):
        lost = 0
        def _write(self, run):
            try:
                return super()._write(run)
            except PreconditionFailed:
                Counting.lost += 1
                raise

    url, run_id, who, count, go = sys.argv[1:6]
    store = Counting(open_store(url))
    while not os.path.exists(go):
        time.sleep(0.002)
    for i in range(int(count)):
        store.tag(run_id, (f"{who}-{i}",))
    print(Counting.lost)
    """
)


def _per_op(fn: Callable[[int], object], n: int) -> float:
    """Median milliseconds of one call."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _race(url: str, meta: ObjectStore, env: dict[str, str], n: int, work: Path) -> tuple[float, int]:
    runs = RunStore(meta)
    run = runs.create(Run(id=new_ksuid(), start="2023-06-09T14:28:56Z"))
    go = work / f"go-{run.id}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, run.id, who, str(n), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    time.sleep(1.0)  # both have imported datarun and wait for the start signal
    t0 = time.perf_counter()
    go.touch()
    lost = sum(int(p.communicate(timeout=600)[0].strip()) for p in procs)
    seconds = time.perf_counter() - t0
    assert len(runs.history(run.id)) == 2 * n + 1, "a version was lost"
    return seconds, lost


def measure(name: str, url: str, meta: ObjectStore, env: dict[str, str], n: int, work: Path) -> dict[str, float]:
    client = Client(meta, cache_dir=work / f"cache-{name}")
    client.create_repo(f"r{new_ksuid().lower()[:8]}")
    repo = client.list_repos()[-1].name
    src = work / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("x")
    bundle = client.upload(repo, src, "m").bundle.id
    runs = client.runs
    run = runs.create(Run(id=new_ksuid(), start="2023-06-09T14:28:56Z"))
    prefix = new_ksuid()
    out = {
        "run update (tag)": _per_op(lambda i: runs.tag(run.id, (f"t{i}",)), n),
        "label move (set_label)": _per_op(lambda i: client.set_label(repo, "l", bundle), n),
        "bare put_if_absent": _per_op(lambda i: meta.put_if_absent(f"bench/{prefix}/{i}", b"{}"), n),
    }
    seconds, lost = _race(url, meta, env, n, work)
    out["2 racing writers: ms per landed update"] = seconds * 1000 / (2 * n)
    out["2 racing writers: lost races"] = float(lost)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["local", "azure"], default=None)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        work = Path(tmp)
        azurite: Azurite | None = None
        try:
            targets: list[tuple[str, Callable[[], tuple[str, ObjectStore, dict[str, str]]]]] = []
            if args.only in (None, "local"):

                def local() -> tuple[str, ObjectStore, dict[str, str]]:
                    root = work / f"store-{new_ksuid()}"
                    return f"file://{root}", LocalStore(root), dict(os.environ)

                targets.append(("local", local))
            if args.only in (None, "azure"):
                missing = azurite_missing()
                if missing:
                    print(f"skipping Azurite: {missing}", file=sys.stderr)
                else:
                    azurite = Azurite(work / "azurite")
                    azurite.start()
                    server = azurite

                    def azure() -> tuple[str, ObjectStore, dict[str, str]]:
                        bucket = server.new_bucket()
                        return f"az://{bucket}/datarun", server.store(bucket), {**os.environ, **server.env()}

                    targets.append(("azurite", azure))
            for rep in range(args.reps):
                for name, make in targets:
                    url, meta, env = make()
                    try:
                        rows = measure(name, url, meta, env, args.updates, work)
                    finally:
                        meta.close()
                    for row, value in rows.items():
                        results.setdefault(row, {}).setdefault(name, []).append(value)
                    print(f"rep {rep + 1}/{args.reps} {name} done", file=sys.stderr)
        finally:
            if azurite is not None:
                azurite.stop()
    names = [n for n in ("local", "azurite") if any(n in v for v in results.values())]
    print(
        f"| per update, median ms (range over {args.reps} runs, {args.updates} updates each) | "
        + " | ".join(names)
        + " |"
    )
    print("|---|" + "---|" * len(names))
    for row, by_store in results.items():
        cells = [f"{min(by_store[n]):.1f} - {max(by_store[n]):.1f}" for n in names]
        print(f"| {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
