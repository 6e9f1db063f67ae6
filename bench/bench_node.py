"""Node benchmark: a DataRun on a real kubelet + containerd node vs the same work done by the CLI on the host.

    .venv/bin/python bench/bench_node.py                 # 100 MiB in, 100 MiB out, 3 runs of each
    .venv/bin/python bench/bench_node.py --mib 16 --runs 1   # a smoke run

The node is tests/node/node.py's (tests/node/build.sh builds it; it needs root), with charts/datarun installed by
helm and fake-gcs-server on the pod network's gateway, as in the node tier. Two comparisons, side by side:

1. **a cold DataRun** (``kubectl apply`` until ``kubectl wait`` sees ``Succeeded``): a 100 MiB input
   ``mode: mount`` (FUSE, streamed), the app ``cksum``s it and writes 100 MiB of random bytes (nothing
   deduplicates), which become a bundle labelled ``latest``; new pod, empty chunk cache every run.
   **cli**: ``datarun bundle mount --daemonize`` with an empty cache, the same ``sh`` app, ``datarun bundle
   upload --label``, unmount. Bar: DataRun under 2x the cli.
2. **reading the mounted input**: one run mounts a bundle of two 100 MiB files; the app reads ``a.bin`` from
   inside its container and reports how long it took; meanwhile the host reads ``b.bin`` through the same FUSE
   mount (it reaches the host through the kubelet's folder, by mount propagation). Both reads are cold (two
   files, nothing cached). Bar: inside the container at least 70% of the host's MiB/s.

It also prints where each DataRun's time went, step by step (bench/node_phases.py says from which clocks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.node_phases import MARKS, Watches, phases, run_marks, start_watches  # noqa: E402
from tests.node.node import STATE_DIR, NodeCluster, node_missing  # noqa: E402
from tests.node.release import (  # noqa: E402
    RUN_NAMESPACE,
    PodNetworkGCS,
    images_missing,
    import_images,
    install_chart,
    local_images,
)
from tests.store.emulators import gcs_missing  # noqa: E402

DATARUN = str(Path(sys.executable).parent / "datarun")  # the CLI of the venv that runs this script
MIB = 1 << 20


def app_script(mib: int, source: str, target: str) -> str:
    """The app, identical on both sides: read the whole input, write ``mib`` MiB of new data."""
    return f'set -e; cksum "{source}/input.bin"; head -c {mib * MIB} /dev/urandom > "{target}/output.bin"'


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([DATARUN, "-q", *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"datarun {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def random_file(path: Path, mib: int) -> None:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))


def run_cli(env: dict[str, str], work: Path, mib: int) -> float:
    shutil.rmtree(work, ignore_errors=True)
    (work / "cache").mkdir(parents=True)
    (work / "in").mkdir()
    (work / "out").mkdir()
    env = {**env, "DATARUN_CACHE_DIR": str(work / "cache")}
    started = time.perf_counter()
    cli(env, "bundle", "mount", "--repo", "in", "--label", "v1", "--mount", str(work / "in"), "--daemonize",
        "--cache-dir", str(work / "cache"))  # fmt: skip
    try:
        subprocess.run(["sh", "-c", app_script(mib, str(work / "in"), str(work / "out"))], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        subprocess.run(["fusermount3", "-u", str(work / "in")], check=False, capture_output=True)
    cli(env, "bundle", "upload", "--path", str(work / "out"), "--repo", "out", "--label", "latest", "--message=b")
    return time.perf_counter() - started


def datarun(name: str, args: str, repo: str, label: str, output: bool = True) -> dict[str, object]:
    spec: dict[str, object] = {
        "image": "localhost/datarun-base:bookworm",
        "command": ["sh", "-c"],
        "args": [args],
        "inputs": [{"name": "data", "repo": repo, "label": label, "path": "in", "mode": "mount"}],
        "outputs": [{"name": "result", "repo": "out", "path": "out", "label": "latest"}] if output else [],
    }
    return {"apiVersion": "datarun.io/v1alpha1", "kind": "DataRun", "metadata": {"name": name}, "spec": spec}


def run_node(node: NodeCluster, watches: Watches, index: int, mib: int) -> tuple[float, dict[str, float]]:
    """One cold DataRun: seconds from ``kubectl apply`` until ``kubectl wait`` saw it succeed, and its marks."""
    name = f"bench-{index}"
    body = datarun(name, app_script(mib, "$DATARUN_INPUT_DATA", "$DATARUN_OUTPUT_RESULT"), "in", "v1")
    applied = time.time()
    started = time.perf_counter()
    node.kubectl("apply", "-n", RUN_NAMESPACE, "-f", "-", stdin=json.dumps(body))
    node.kubectl("wait", "-n", RUN_NAMESPACE, f"dr/{name}", "--for=jsonpath={.status.phase}=Succeeded",
                 "--timeout=600s", timeout=630)  # fmt: skip
    elapsed = time.perf_counter() - started
    pod = node.get_json(
        "-n", RUN_NAMESPACE, "pod", node.get_json("-n", RUN_NAMESPACE, f"dr/{name}")["status"]["podName"]
    )
    marks = run_marks(watches, name, pod, applied, applied + elapsed)
    node.kubectl("delete", "-n", RUN_NAMESPACE, f"dr/{name}", "--wait=true", timeout=120)
    return elapsed, marks


def fuse_mount_points() -> list[Path]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith("fuse") and fields[4].startswith(str(STATE_DIR)):
                points.append(Path(fields[4]))
    return points


def run_read(node: NodeCluster, index: int, mib: int) -> tuple[float, float]:
    """MiB/s of a cold read inside the app's container and of one on the host, through the same mount."""
    name = f"bench-read-{index}"
    app = ('s=$(date +%s%N); cat "$DATARUN_INPUT_DATA/a.bin" > /dev/null; e=$(date +%s%N); '
           'echo "APP_READ_NS=$((e - s))"; sleep 120')  # fmt: skip
    node.kubectl("apply", "-n", RUN_NAMESPACE, "-f", "-", stdin=json.dumps(datarun(name, app, "pair", "v1", False)))
    pod = f"{name}-run"
    deadline = time.monotonic() + 600
    app_ns = None
    while app_ns is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: the app never reported its read")
        logs = node.kubectl("logs", "-n", RUN_NAMESPACE, pod, "-c", "main", check=False, timeout=30)
        found = re.search(r"APP_READ_NS=(\d+)", logs)
        app_ns = int(found.group(1)) if found else None
        if app_ns is None:
            time.sleep(0.5)
    host_file = None
    for point in fuse_mount_points():
        try:  # a dead mount of an earlier run (transport endpoint is not connected) raises
            host_file = next((d / "b.bin" for d in [point, *point.glob("*")] if (d / "b.bin").is_file()), None)
        except OSError:
            continue
        if host_file is not None:
            break
    if host_file is None:
        raise SystemExit(f"no FUSE mount under {STATE_DIR} holds b.bin: {fuse_mount_points()}")
    started = time.perf_counter()
    with host_file.open("rb", buffering=0) as f:
        while f.read(MIB):
            pass
    host = time.perf_counter() - started
    node.kubectl("delete", "-n", RUN_NAMESPACE, f"dr/{name}", "--wait=true", timeout=180)
    return mib / (app_ns / 1e9), mib / host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the input and of the output (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side")
    args = parser.parse_args()
    images = local_images()
    missing = node_missing() or gcs_missing() or images_missing(images)
    if missing:
        raise SystemExit(f"cannot run: {missing}")

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-"))
    node = NodeCluster()
    with node:
        import_images(node, images)
        server = PodNetworkGCS(tmp / "gcs")
        server.start()
        try:
            bucket = server.new_bucket()
            url = f"gs://{bucket}/datarun"
            env = {**os.environ, **server.env(), "DATARUN_STORE": url, "DATARUN_CONFIG": str(tmp / "config.yaml")}
            env["DATARUN_CACHE_DIR"] = str(tmp / "seed-cache")
            cli(env, "config", "create", "--name", "bench", "--email", "bench@example.org")
            seed, pair = tmp / "seed", tmp / "pair"
            seed.mkdir()
            pair.mkdir()
            random_file(seed / "input.bin", args.mib)
            random_file(pair / "a.bin", args.mib)
            random_file(pair / "b.bin", args.mib)
            for repo in ("in", "out", "pair"):
                cli(env, "repo", "create", "--repo", repo)
            cli(env, "bundle", "upload", "--path", str(seed), "--repo", "in", "--label", "v1", "--message=seed")
            cli(env, "bundle", "upload", "--path", str(pair), "--repo", "pair", "--label", "v1", "--message=pair")
            shutil.rmtree(seed)
            shutil.rmtree(pair)
            install_chart(node, images, url, server.env())
            watches = start_watches(node, RUN_NAMESPACE)
            timed = [run_node(node, watches, i, args.mib) for i in range(args.runs)]
            node_runs = [elapsed for elapsed, _ in timed]
            cli_runs = [run_cli(env, tmp / f"cli{i}", args.mib) for i in range(args.runs)]
            reads = [run_read(node, i, args.mib) for i in range(args.runs)]
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    runs = " | ".join(f"run {i + 1}" for i in range(args.runs))
    print(f"\nDataRun on a real node (kubelet {node.timings.get('total', 0):.0f} s to start), {args.mib} MiB in and "
          f"out on fake-gcs-server, {os.cpu_count()} CPUs\n")  # fmt: skip
    print(f"| path | {runs} | median |")
    print("|---" * (args.runs + 2) + "|")

    def row(name: str, values: list[float], unit: str) -> None:
        cells = " | ".join(f"{v:.2f}" for v in values)
        print(f"| {name} ({unit}) | {cells} | {statistics.median(values):.2f} |")

    row("cli on the host: mount, app, upload", cli_runs, "s")
    row("DataRun: kubectl apply until Succeeded", node_runs, "s")
    row("read in the app's container", [r[0] for r in reads], "MiB/s")
    row("read on the host, same mount", [r[1] for r in reads], "MiB/s")
    print("\nwhen each step of a DataRun was seen (s after kubectl apply; the watches' and the coordination files' "
          "clocks, see bench/node_phases.py)\n")  # fmt: skip
    print(f"| mark (source) | {runs} | median |")
    print("|---" * (args.runs + 2) + "|")
    for mark, source in MARKS:
        if all(mark in marks for _, marks in timed):
            row(f"{mark} ({source})", [marks[mark] for _, marks in timed], "s")
    print("\nthe same as steps\n")
    print(f"| step | {runs} | median |")
    print("|---" * (args.runs + 2) + "|")
    steps = [phases(marks) for _, marks in timed]
    for step in steps[0]:
        if all(step in s for s in steps):
            row(step, [s[step] for s in steps], "s")
    load = os.getloadavg()
    print(
        f"\nload average (1/5/15 min) at the start {' '.join(f'{x:.2f}' for x in load_start)}, "
        f"at the end {' '.join(f'{x:.2f}' for x in load)}"
    )
    ratios = [n / c for n, c in zip(node_runs, cli_runs, strict=True)]
    read_ratios = [r[0] / r[1] for r in reads]
    print(f"\nbar 1, DataRun under 2x the cli: {min(ratios):.2f}x to {max(ratios):.2f}x over {args.runs} runs "
          f"({'met' if max(ratios) < 2 else 'NOT met'})")  # fmt: skip
    print(f"bar 2, container read at least 70% of the host's: {min(read_ratios):.0%} to {max(read_ratios):.0%} "
          f"({'met' if min(read_ratios) >= 0.7 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
