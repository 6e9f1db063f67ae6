#!/usr/bin/env python3
"""The operator against the local control plane (tests/cluster): create-to-pod latency, a burst, a kill mid-burst.

    .venv/bin/python bench/bench_operator.py              # 100 sequential runs, a burst of 500
    .venv/bin/python bench/bench_operator.py --small      # 20 and 50, a smoke run

It starts a throwaway etcd + kube-apiserver + kube-scheduler + kwok (tests/cluster/build.sh builds them), installs
the chart's CRD and RBAC, and runs ``python -m datarun_operator`` as the chart's ServiceAccount with a local store.

- latency: one DataRun at a time; from the create call to the pod appearing in a watch (p50, p99).
- burst: N DataRuns created at once (16 client threads); time until every one has its pod; the operator's peak RSS.
- kill: another burst of N; the operator is SIGKILLed when a third of the pods exist and started again. Then
  every pod is finished (kwok), and every DataRun must reach Succeeded with exactly one pod.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.cluster

from datarun.repo import connect
from datarun_operator.builder import FUSE, LABEL_RUN
from datarun_operator.models import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import NODE_NAME, Cluster, ControlPlane
from tests.cluster.kubelet import ContainerEnd, finish_pod
from tests.cluster.operator_harness import OperatorProcess, install_chart, service_account_kubeconfig
from tests.operator.builders import fuse_result

NAMESPACE = "bench"


class PodWatch:
    """Records when each run's pod is first seen (a watch, as the operator's own view of the API)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        watch: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        while not self.stopped.is_set():
            for event in watch.stream(
                self.core.list_namespaced_pod, NAMESPACE, label_selector=LABEL_RUN, timeout_seconds=2
            ):
                run = event["object"].metadata.labels[LABEL_RUN]
                with self.lock:
                    self.seen.setdefault(run, time.monotonic())
                if self.stopped.is_set():
                    break

    def wait(self, names: list[str], timeout: float) -> float:
        """Monotonic time when the last of ``names`` had a pod; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = [n for n in names if n not in self.seen]
                if not missing:
                    return max(self.seen[n] for n in names)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(names)} runs have no pod after {timeout:.0f} s")
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def datarun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataRun",
        "metadata": {"name": name},
        "spec": {
            "image": "busybox:1.36",
            "command": ["sh", "-c", "cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"],
            "inputs": [{"name": "numbers", "repo": "in", "label": "v1", "path": "in/numbers"}],
            "outputs": [{"name": "result", "repo": "out", "path": "out/result", "label": "latest"}],
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def finish_all(core: kubernetes.client.CoreV1Api, names: list[str], timeout: float = 300) -> None:
    """Once kwok runs them, end every run's pod as a successful run would (exit 0, the sidecar's result)."""
    message = fuse_result(
        [{"name": "result", "repo": "out", "path": "/data/out/result", "bundle": "b", "uploaded": True}]
    )
    ends = {FUSE: ContainerEnd(0, message)}
    waiting = {f"{n}-run" for n in names}
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(16) as pool:
        while waiting and time.monotonic() < deadline:
            running = [
                p.metadata.name
                for p in core.list_namespaced_pod(NAMESPACE, label_selector=LABEL_RUN).items
                if p.metadata and p.status and p.status.phase == "Running" and p.metadata.name in waiting
            ]
            list(pool.map(lambda pod: finish_pod(core, NAMESPACE, pod, ends), running))
            waiting -= set(running)
            time.sleep(0.5)


def wait_final(custom: kubernetes.client.CustomObjectsApi, names: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        listing: Any = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        items = listing["items"]
        phases = {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}
        wanted = {n: phases.get(n, "") for n in names}
        if all(p in ("Succeeded", "Failed") for p in wanted.values()) or time.monotonic() > deadline:
            return wanted
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="20 sequential runs and bursts of 50")
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sequential, burst = (20, 50) if args.small else (args.sequential, args.burst)

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    store_url = f"file://{work / 'store'}"
    client = connect(store_url)
    client.create_repo("in", "inputs")
    client.create_repo("out", "outputs")
    (work / "data").mkdir()
    (work / "data" / "numbers.txt").write_text("1 2 3\n")
    client.upload("in", str(work / "data"), "numbers", label="v1")
    client.close()

    rows: list[tuple[str, str, str]] = []
    with ControlPlane() as cp:
        cluster = Cluster(cp.kubeconfig, NODE_NAME, cp)
        install_chart(cluster)
        config: Any = kubernetes.config
        api: kubernetes.client.ApiClient = config.new_client_from_config(config_file=str(cp.kubeconfig))
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
        kubeconfig = service_account_kubeconfig(cluster, work / "operator-kubeconfig")
        operator = OperatorProcess(
            kubeconfig,
            work,
            env={
                "DATARUN_OPERATOR_STORE_URL": store_url,
                "DATARUN_OPERATOR_SIDECAR_IMAGE": "localhost/sidecar:bench",
                "DATARUN_OPERATOR_RUN_POD_NODE_SELECTOR": '{"type": "kwok"}',
            },
        )
        operator.start()
        watch = PodWatch(api)

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, datarun(name))

        try:
            # -- latency ---------------------------------------------------------------------------------------
            latencies: list[float] = []
            for i in range(sequential):
                name = f"seq-{i}"
                begin = time.monotonic()
                create(name)
                latencies.append(watch.wait([name], 30) - begin)
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            rows.append((f"create -> pod, p50 ({sequential} runs)", f"{p50 * 1000:.0f} ms", "< 300 ms"))
            rows.append((f"create -> pod, p99 ({sequential} runs)", f"{p99 * 1000:.0f} ms", "< 1 s"))

            # -- burst -----------------------------------------------------------------------------------------
            peak = [operator.rss_bytes()]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], operator.rss_bytes())
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            names = [f"burst-{i}" for i in range(burst)]
            begin = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, names))
            created = time.monotonic() - begin
            all_pods = watch.wait(names, 300) - begin
            sampling.set()
            sampler.join()
            rows.append((f"burst of {burst}: all created (client)", f"{created:.1f} s", ""))
            rows.append((f"burst of {burst}: every run has its pod", f"{all_pods:.1f} s", "< 60 s"))
            rows.append(("operator peak RSS during the burst", f"{peak[0] / 2**20:.0f} MiB", "< 250 MB"))

            # -- kill mid-burst --------------------------------------------------------------------------------
            names2 = [f"kill-{i}" for i in range(burst)]
            creator = ThreadPoolExecutor(16)
            futures = [creator.submit(create, n) for n in names2]
            while True:
                with watch.lock:
                    have = sum(1 for n in names2 if n in watch.seen)
                if have >= burst // 3:
                    break
                time.sleep(0.01)
            operator.kill()
            killed_at = have
            for f in futures:
                f.result()
            creator.shutdown()
            operator.start()
            watch.wait(names2, 300)
            finish_all(core, names + names2)
            phases = wait_final(custom, names + names2, 300)
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=LABEL_RUN).items
            per_run: dict[str, int] = {}
            for pod in pods:
                run = (pod.metadata.labels or {})[LABEL_RUN] if pod.metadata else ""
                per_run[run] = per_run.get(run, 0) + 1
            duplicates = sum(1 for n in names + names2 if per_run.get(n, 0) > 1)
            final = sum(1 for p in phases.values() if p == "Succeeded")
            rows.append((f"kill -9 at {killed_at}/{burst} pods: runs with more than one pod", str(duplicates), "0"))
            rows.append((f"runs Succeeded after the restart (of {2 * burst})", str(final), str(2 * burst)))
        finally:
            watch.stop()
            operator.stop()

    print("| scenario | figure | bar |\n|---|---:|---|")
    for scenario, figure, bar in rows:
        print(f"| {scenario} | {figure} | {bar} |")
    print(
        f"\nsequential latencies: mean {statistics.mean(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("scenario", "figure", "bar"), r, strict=True)) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
