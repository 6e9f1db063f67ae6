"""Run index benchmark: queries over 100k runs in SQLite, a cold `run query`, a first sync from
Azurite, and MLflow's ``search_runs`` on the same runs, side by side in one run.

    .venv/bin/python bench/bench_runs.py                 # 100,000 runs local, 10,000 in Azurite
    .venv/bin/python bench/bench_runs.py --small         # 5,000 / 1,000: a smoke run
    .venv/bin/python bench/bench_runs.py --no-mlflow     # without the peer
    .venv/bin/python bench/bench_runs.py --repeat 1      # one round (default 3: every bar as a range)

What each row is:
- *first sync, local store*: an empty SQLite index reads the whole change feed of a local store
  (one JSON object per run, with nested params) - not a bar, it says what a rebuild costs;
- *selective query* / *order-by top 10*: ``Index.query`` in this process, p50 over ``--reps``,
  against ``MlflowClient.search_runs`` on MLflow's SQLite backend with the same runs and the
  equivalent filter (MLflow params are strings, so numbers are also logged as metrics there);
- *cold `datarun run query`*: a new process (``python -m datarun.cli.main``) that opens the index,
  syncs (nothing is new: one list of the feed) and answers, p50 of 5 after one unmeasured start
  (which leaves the bytecode and the query grammar cache, as any earlier command would); the
  child's CPU seconds are shown next to the wall time, since on a loaded machine the wall time
  is mostly waiting for a core. ``PYTHONDONTWRITEBYTECODE`` is dropped from the child's
  environment: with it every start recompiles ~75 modules (0.1 s), which no installed CLI does;
- *first sync from Azurite*: an empty index reads a 10k-run feed; the list and read requests are
  counted (list HTTP requests by wrapping the SDK's ``list_blobs``, reads at the store API); then
  ``Index.compact`` (``datarun run compact``) writes a snapshot and a second empty index syncs from
  it: that is the < 15 s bar (one object instead of one per run).

MLflow runs from its own venv in ``.cache/bench/mlflow-venv`` (created on first use), so that its
dependencies stay out of datarun's.

Each round works in its own folder, deleted when the round ends (a 100k-run round leaves
~1 GiB: indexes, the MLflow database, Azurite's files), and records the 1-minute load average
at its start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datarun.catalog import Index, open_index  # noqa: E402
from datarun.ids import new_ksuid  # noqa: E402
from datarun.store import LocalStore  # noqa: E402
from tests.catalog.writer import run_doc  # noqa: E402
from tests.store.counting import CountingStore  # noqa: E402
from tests.store.emulators import azurite_missing, start_azurite  # noqa: E402

MLFLOW_VENV = ROOT / ".cache" / "bench" / "mlflow-venv"
WORDS = [f"w{i:02d}" for i in range(19)] + ["sample"]

Q_SELECTIVE = "run.params.description = 'sample' AND run.params.model.lr > 0.099"
Q_ORDER = ("run.params.model.layers >= 9", "run.params.model.lr")
MLFLOW_QUERIES = {
    "selective": {"filter": "params.description = 'sample' AND metrics.`model.lr` > 0.099", "top": 10},
    "order": {"filter": "metrics.`model.layers` >= 9", "order_by": ["metrics.`model.lr` DESC"], "top": 10},
}


@dataclass
class Row:
    scenario: str
    datarun: str
    peer: str
    bar: str
    passed: bool | None
    value: float | None = None  # the measured seconds, for the range over --repeat rounds
    peer_value: float | None = None


def make_docs(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    docs = []
    for i in range(n):
        start = base + i * 17
        params = {
            "description": rng.choice(WORDS),
            "model": {
                "lr": rng.uniform(0, 0.1),
                "layers": rng.randint(1, 10),
                "name": rng.choice(["bert", "gpt", "cnn"]),
            },
            "optimizer": {"name": rng.choice(["adam", "sgd"]), "momentum": rng.choice([0.9, 0.99])},
            "data": {"split": rng.choice([0.1, 0.2, 0.3]), "name": f"set{rng.randint(1, 50)}"},
            "seed": i,
        }
        doc = run_doc(
            new_ksuid(start),
            start=datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            title=f"run-{i}",
            params=params,
            tags=rng.sample(["gpu", "cpu", "nightly", "sweep"], 2),
            inputs=[{"name": "data", "repo": "datasets", "bundle": new_ksuid(start - 60)}],
        )
        doc["_start"] = start
        docs.append(doc)
    return docs


def write_local_feed(root: Path, docs: list[dict[str, Any]]) -> None:
    """The feed as the runs writer leaves it, written as plain files (no fsync: setup, not measured)."""
    changes = root / "runs" / "changes"
    changes.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "_start"}
        (changes / f"{new_ksuid(doc['_start'] + 1)}.json").write_bytes(orjson.dumps(body))


def p50(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    result = fn()  # warm-up: page cache, statement cache
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ensure_mlflow() -> Path | None:
    python = MLFLOW_VENV / "bin" / "python"
    # The venv can exist without MLflow (an install that failed half-way): ask for the import.
    if python.exists() and subprocess.run([str(python), "-c", "import mlflow"], capture_output=True).returncode == 0:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
    done = subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", "mlflow>=3,<4"], check=False)
    return python if done.returncode == 0 else None


def run_mlflow(work: Path, docs: list[dict[str, Any]], reps: int) -> dict[str, Any] | None:
    python = ensure_mlflow()
    if python is None:
        print("MLflow could not be installed (pip failed); the peer column is empty", file=sys.stderr)
        return None
    runs = work / "mlflow-runs.jsonl"
    with runs.open("wb") as out:
        for doc in docs:
            out.write(
                orjson.dumps(
                    {
                        "id": doc["id"],
                        "title": doc["title"],
                        "params": doc["params"],
                        "start_ms": int(doc["_start"] * 1000),
                    }
                )
                + b"\n"
            )
    queries = work / "mlflow-queries.json"
    queries.write_text(json.dumps(MLFLOW_QUERIES))
    done = subprocess.run(
        [
            str(python),
            str(ROOT / "bench" / "mlflow_peer.py"),
            str(work / "mlflow.db"),
            str(runs),
            str(queries),
            str(reps),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=work,
    )
    if done.returncode != 0:
        print(f"MLflow peer failed: {done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cold_query(store_url: str, index_url: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall p50, CPU p50) in seconds of five new `run query` processes, after one unmeasured."""
    times, cpus = [], []
    for n in range(6):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "datarun.cli.main",
                "--store",
                store_url,
                "run",
                "query",
                Q_SELECTIVE,
                "--index",
                index_url,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0 or not done.stdout.strip():
            raise SystemExit(f"cold query failed: {done.stderr}")
        if n:
            times.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(times), statistics.median(cpus)


class _CountingContainer:
    """Counts the SDK's list_blobs calls: AzureStore makes one per page, so one per HTTP list request."""

    def __init__(self, inner: Any, counter: Counter[str]) -> None:
        self._inner = inner
        self._counter = counter

    def list_blobs(self, *args: Any, **kwargs: Any) -> Any:
        self._counter["list_http"] += 1
        return self._inner.list_blobs(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class CloudSync:
    seconds: float  # first sync of the whole feed
    calls: Counter[str]
    n: int
    again: float  # then a sync with nothing new
    again_calls: Counter[str]
    snapshot: float  # a new index's first sync from the snapshot `run compact` wrote
    snapshot_calls: Counter[str]
    cpu: tuple[float, float]  # CPU seconds of the first whole-feed sync: (Azurite's, this process's)


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process, from /proc (where an emulator spends a sync)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def azurite_sync(work: Path, n: int) -> CloudSync | None:
    if azurite_missing():
        print(f"skipping Azurite: {azurite_missing()}", file=sys.stderr)
        return None
    server = start_azurite(work / "azurite")
    try:
        bucket = server.new_bucket()
        store = server.store(bucket)
        docs = make_docs(n, seed=2)

        def put(doc: dict[str, Any]) -> None:
            body = orjson.dumps({k: v for k, v in doc.items() if k != "_start"})
            store.put_if_absent(f"runs/changes/{new_ksuid(doc['_start'] + 1)}.json", body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, docs))
        counter: Counter[str] = Counter()
        store._container = _CountingContainer(store._container, counter)  # type: ignore[attr-defined]
        counting = CountingStore(store)
        assert server.proc is not None
        with open_index(f"sqlite://{work / 'azure-index.sqlite'}", work) as index:
            server_cpu, own_cpu = _proc_cpu(server.proc.pid), time.process_time()
            began = time.perf_counter()
            stats = index.sync(counting)
            seconds = time.perf_counter() - began
            cpu = (_proc_cpu(server.proc.pid) - server_cpu, time.process_time() - own_cpu)
            assert stats.applied == n, stats
            calls = Counter(counting.calls) + counter
            counting.calls.clear()
            counter.clear()
            began = time.perf_counter()
            index.sync(counting)
            again = time.perf_counter() - began
            again_calls = Counter(counting.calls) + counter
            index.compact(store)  # what `datarun run compact` does (the index is up to date: one list)
        counting.calls.clear()
        counter.clear()
        with open_index(f"sqlite://{work / 'azure-index-2.sqlite'}", work) as fresh:
            began = time.perf_counter()
            stats = fresh.sync(counting)
            snapshot = time.perf_counter() - began
            assert stats.applied == n and fresh.count() == n, stats
            snapshot_calls = Counter(counting.calls) + counter
        return CloudSync(seconds, calls, n, again, again_calls, snapshot, snapshot_calls, cpu)
    finally:
        server.stop()


def _round(
    args: argparse.Namespace, work: Path, docs: list[dict[str, Any]], store_root: Path
) -> tuple[list[Row], dict[str, Any] | None]:
    """One round of every scenario, from an empty index (and a new Azurite)."""
    rows: list[Row] = []
    work.mkdir(parents=True)
    index_url = f"sqlite://{work / 'index.sqlite'}"
    with open_index(index_url, work) as index:
        stats = index.sync(LocalStore(store_root))
        size = (work / "index.sqlite").stat().st_size
        rows.append(
            Row(
                f"first sync, local store, {args.runs:,} runs",
                f"{stats.seconds:.1f} s ({size / 2**20:.0f} MiB)",
                "",
                "-",
                None,
                stats.seconds,
            )
        )
        # The peer is slower by orders of magnitude; 5 repetitions give its median well enough.
        mlflow = None if args.no_mlflow else run_mlflow(work, docs, min(args.reps, 5))
        selective, found = p50(lambda: index.query(Q_SELECTIVE), args.reps)
        rows.append(_row("selective query (p50)", selective, mlflow, "selective", found, 0.020, "< 20 ms"))
        where, order = Q_ORDER
        ordered, found = p50(lambda: index.query(where, order_by=order, descending=True, top=10), args.reps)
        rows.append(_row("--order-by ... DESC --top 10 (p50)", ordered, mlflow, "order", found, 0.050, "< 50 ms"))
        unfiltered, _ = p50(lambda: index.query(None, order_by=order, top=10), args.reps)
        rows.append(Row("--order-by over all runs, no filter (p50)", ms(unfiltered), "", "-", None, unfiltered))
        _check_same(index, docs)
    env = {**os.environ, "DATARUN_CACHE_DIR": str(work / "cache"), "DATARUN_CONFIG": str(work / "none.yaml")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "operator"), str(ROOT / "sidecar")])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cold, cpu = cold_query(f"file://{store_root}", index_url, env)
    rows.append(
        Row(
            "cold `datarun run query`, sync with nothing new (p50 of 5)",
            f"{ms(cold)} (CPU {ms(cpu)})",
            "",
            "< 1 s",
            cold < 1.0,
            cold,
        )
    )
    cloud = azurite_sync(work, args.cloud_runs)
    if cloud is not None:
        seconds, calls, n = cloud.seconds, cloud.calls, cloud.n
        again, again_calls = cloud.again, cloud.again_calls
        rows.append(
            Row(
                f"first sync from Azurite, {n:,} runs, whole feed (no snapshot)",
                f"{seconds:.1f} s; {calls['list']} list call, {calls['list_http']} list requests, "
                f"{calls['read']} reads; CPU: Azurite {cloud.cpu[0]:.1f} s, datarun {cloud.cpu[1]:.1f} s",
                "",
                "-",
                None,
                seconds,
            )
        )
        rows.append(
            Row(
                "  then a sync with nothing new",
                f"{ms(again)}; {again_calls['list_http']} list requests, {again_calls['read']} reads",
                "",
                "-",
                None,
                again,
            )
        )
        snap, snap_calls = cloud.snapshot, cloud.snapshot_calls
        rows.append(
            Row(
                f"first sync from Azurite, {n:,} runs, from the `run compact` snapshot",
                f"{snap:.1f} s; {snap_calls['list']} list calls, {snap_calls['list_http']} list requests, "
                f"{snap_calls['read']} reads",
                "",
                "< 15 s",
                snap < 15,
                snap,
            )
        )
    return rows, mlflow


def _ranges(rounds: list[list[Row]]) -> list[Row]:
    """One row per scenario: the range over the rounds (the last round's details alongside)."""
    out = []
    for same in zip(*rounds, strict=True):
        last = same[-1]
        values = [r.value for r in same if r.value is not None]
        peers = [r.peer_value for r in same if r.peer_value is not None]
        datarun, peer = last.datarun, last.peer
        if len(values) == len(same) and len(same) > 1:
            datarun = f"{_span(values)} over {len(same)} rounds (last: {last.datarun})"
        if peers and len(same) > 1:
            peer = f"{_span(peers)} over {len(peers)} rounds (last: {last.peer})"
        passed = None if last.passed is None else all(bool(r.passed) for r in same)
        out.append(Row(last.scenario, datarun, peer, last.bar, passed))
    return out


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo * 1000:.1f}-{hi * 1000:.1f} ms" if hi < 1 else f"{lo:.1f}-{hi:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--cloud-runs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--small", action="store_true", help="5,000 local and 1,000 Azurite runs")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    parser.add_argument("--repeat", type=int, default=3, help="Rounds; every bar is reported as a range over them.")
    args = parser.parse_args()
    if args.small:
        args.runs, args.cloud_runs = 5_000, 1_000
    rounds: list[list[Row]] = []
    mlflow: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        work = Path(tmp)
        docs = make_docs(args.runs)
        store_root = work / "store"
        write_local_feed(store_root, docs)
        loads = []
        for n in range(args.repeat):
            print(f"round {n + 1} of {args.repeat} ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            try:
                rows, mlflow = _round(args, work / f"round{n}", docs, store_root)
            finally:
                shutil.rmtree(work / f"round{n}", ignore_errors=True)  # the next round needs the disk
            loads.append(f"round {n + 1}: {load:.1f} -> {os.getloadavg()[0]:.1f}")
            rounds.append(rows)
    rows = _ranges(rounds)
    _print(rows, mlflow)
    print(f"\nLoad average (1 min, {os.cpu_count()} cores) at each round's start -> end: {'; '.join(loads)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


def _row(
    name: str, seconds: float, mlflow: dict[str, Any] | None, key: str, found: object, bar: float, bar_text: str
) -> Row:
    peer = ""
    theirs: dict[str, Any] = {}
    if mlflow is not None:
        theirs = mlflow[key]
        ours = [d["id"] for d in found]  # type: ignore[attr-defined]
        same = "same runs" if ours == theirs["ids"] else f"DIFFERENT runs ({len(theirs['ids'])})"
        peer = f"{ms(theirs['p50'])} ({theirs['p50'] / seconds:.0f}x; {same})"
    return Row(name, ms(seconds), peer, bar_text, seconds < bar, seconds, None if mlflow is None else theirs["p50"])


def _check_same(index: Index, docs: list[dict[str, Any]]) -> None:
    """The benchmark's answers are the right ones (brute force over the documents)."""
    want = sorted(
        (d for d in docs if d["params"]["description"] == "sample" and d["params"]["model"]["lr"] > 0.099),
        key=lambda d: d["start"],
        reverse=True,
    )[:10]
    got = index.query(Q_SELECTIVE)
    assert [d["id"] for d in got] == [d["id"] for d in want], "the selective query gave a wrong answer"


def _print(rows: list[Row], mlflow: dict[str, Any] | None) -> None:
    peer = "MLflow search_runs" + (f" {mlflow['mlflow']} ({mlflow['backend']})" if mlflow else " (not run)")
    print(f"| scenario | datarun | {peer} | bar | passed |")
    print("|---|---|---|---|---|")
    for r in rows:
        passed = "" if r.passed is None else ("yes" if r.passed else "NO")
        print(f"| {r.scenario} | {r.datarun} | {r.peer} | {r.bar} | {passed} |")
    if mlflow:
        print(f"\nMLflow: loading the runs by INSERT took {mlflow['load_seconds']:.1f} s (not compared).")


if __name__ == "__main__":
    main()
