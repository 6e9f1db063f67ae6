"""Container benchmark: a DataRun in real containers vs the same work done by the CLI on the host.

    .venv/bin/python bench/bench_containers.py              # 100 MiB in, 100 MiB out, 3 runs each
    .venv/bin/python bench/bench_containers.py --mib 16 --runs 1   # a smoke run

Both sides read a 100 MiB input bundle from fake-gcs-server and write a 100 MiB output bundle
(random bytes, so nothing deduplicates) labelled `latest`:

- **pod**: the exact pod of ``get_pod`` (input ``mode: download``, one output) started cold with
  ``podman kube play``: new containers and a new, empty chunk cache every run; timed from the
  ``kube play`` call until the pod has ended (the label has moved by then), and separately
  including the pod's removal;
- **cli**: ``datarun bundle download``, the same ``sh`` app, ``datarun bundle upload --label``,
  with an empty DATARUN_CACHE_DIR every run.

Bar: pod / cli under 2x (medians). Needs the images of images/build.sh and fake-gcs-server
(scripts/install-emulators.sh).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datarun_operator.builder import get_pod  # noqa: E402
from datarun_operator.models import DataRun, Phase  # noqa: E402
from datarun_operator.result import parse_pod_result  # noqa: E402
from datarun_operator.settings import ImageSettings, Settings, StoreSettings  # noqa: E402
from tests.containers.kubeplay import create_secret, play, podman_missing, remove_secret  # noqa: E402
from tests.store.emulators import FakeGCS, gcs_missing  # noqa: E402

DATARUN = str(ROOT / ".venv" / "bin" / "datarun")
QUIET = ["-q"]  # a global option: before the subcommand


def app_script(mib: int, source: str, target: str) -> str:
    """The app, identical on both sides: read the whole input, write ``mib`` MiB of new data."""
    return f'set -e; cksum "{source}/input.bin"; head -c {mib * 1048576} /dev/urandom > "{target}/output.bin"'


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([DATARUN, *QUIET, *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"datarun {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def run_cli(env: dict[str, str], work: Path, mib: int) -> float:
    shutil.rmtree(work, ignore_errors=True)
    (work / "cache").mkdir(parents=True)
    env = {**env, "DATARUN_CACHE_DIR": str(work / "cache")}
    started = time.perf_counter()
    cli(env, "bundle", "download", "--repo", "in", "--label", "v1", "--destination", str(work / "in"))
    (work / "out").mkdir()
    subprocess.run(["sh", "-c", app_script(mib, str(work / "in"), str(work / "out"))], check=True, capture_output=True)
    cli(env, "bundle", "upload", "--path", str(work / "out"), "--repo", "out", "--label", "latest", "--message=b")
    return time.perf_counter() - started


def run_pod(settings: Settings, work: Path, mib: int, input_bundle: str) -> tuple[float, float]:
    body = {
        "apiVersion": "datarun.io/v1alpha1",
        "kind": "DataRun",
        "metadata": {"name": f"bench-{secrets.token_hex(4)}", "namespace": "bench", "uid": str(uuid.uuid4())},
        "spec": {
            "image": "localhost/datarun-base:bookworm",
            "command": ["sh", "-c"],
            "args": [app_script(mib, "$DATARUN_INPUT_DATA", "$DATARUN_OUTPUT_RESULT")],
            "inputs": [{"name": "data", "repo": "in", "label": "v1", "path": "in", "mode": "download"}],
            "outputs": [{"name": "result", "repo": "out", "path": "out", "label": "latest"}],
        },
    }
    pod = get_pod(DataRun.from_body(body), {"data": input_bundle}, settings)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    played = play(pod, work)  # removes the pod (and its volumes) before returning
    total = time.perf_counter() - started
    result = parse_pod_result(played.pod)
    if result.phase is not Phase.SUCCEEDED or not result.outputs[0].bundle:
        raise SystemExit(f"the pod did not succeed: {result}\n{played.describe()}")
    return played.seconds, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the input and of the output (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side")
    args = parser.parse_args()
    from importlib.metadata import version

    tag = version("datarun")
    sidecar, wrapper = f"localhost/datarun-sidecar:{tag}", f"localhost/datarun-wrapper:{tag}"
    missing = gcs_missing() or podman_missing([sidecar, wrapper, "localhost/datarun-base:bookworm"])
    if missing:
        raise SystemExit(f"cannot run: {missing}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-containers-"))
    server = FakeGCS(tmp / "gcs")
    server.start()
    secret = f"bench-store-{secrets.token_hex(4)}"
    try:
        bucket = server.new_bucket()
        url = f"gs://{bucket}/datarun"
        env = {**os.environ, **server.env(), "DATARUN_STORE": url, "DATARUN_CONFIG": str(tmp / "config.yaml")}
        env["DATARUN_CACHE_DIR"] = str(tmp / "seed-cache")
        create_secret(secret, server.env())
        seed = tmp / "seed"
        seed.mkdir()
        with (seed / "input.bin").open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        cli(env, "repo", "create", "--repo", "in")
        cli(env, "repo", "create", "--repo", "out")
        input_bundle = (
            cli(env, "bundle", "upload", "--path", str(seed), "--repo", "in", "--label", "v1", "--message=seed")
            .strip()
            .splitlines()[-1]
        )
        settings = Settings(
            images=ImageSettings(sidecar=sidecar, wrapper=wrapper, pull_policy="Never"),
            store=StoreSettings(url=url, credentials_secret=secret),
        )
        pod_runs = [run_pod(settings, tmp / f"pod{i}", args.mib, input_bundle) for i in range(args.runs)]
        cli_runs = [run_cli(env, tmp / f"cli{i}", args.mib) for i in range(args.runs)]
    finally:
        remove_secret(secret)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def row(name: str, times: list[float], base: float) -> str:
        med = statistics.median(times)
        cells = " | ".join(f"{t:.2f}" for t in times)
        return f"| {name} | {cells} | {med:.2f} | {med / base:.2f}x |"

    cli_median = statistics.median(cli_runs)
    runs = " | ".join(f"run {i + 1} (s)" for i in range(args.runs))
    print(
        f"DataRun with a {args.mib} MiB input and a {args.mib} MiB output on fake-gcs-server, {os.cpu_count()} CPUs\n"
    )
    print(f"| path | {runs} | median (s) | vs cli |")
    print("|---" * (args.runs + 3) + "|")
    print(row("cli on the host (download, app, upload)", cli_runs, cli_median))
    print(row("pod, kube play until the pod ended", [p[0] for p in pod_runs], cli_median))
    print(row("pod, including its removal", [p[1] for p in pod_runs], cli_median))
    ratio = statistics.median(p[0] for p in pod_runs) / cli_median
    print(f"\nbar: pod under 2x the cli: {'met' if ratio < 2 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
