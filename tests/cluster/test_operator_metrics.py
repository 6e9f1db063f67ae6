"""The operator's /metrics during a burst of 500 DataRuns on the real control plane (kwok runs the
pods): the scraped DataRuns-by-phase counts match the phases the API server holds, while the runs
start and after half of them finish.

Run alone, it takes about two minutes here; it is in the cluster tier (`-m cluster`).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from datarun.repo import connect
from datarun_operator.builder import FUSE
from datarun_operator.models import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import Cluster, free_port
from tests.cluster.kubelet import ContainerEnd, finish_pod
from tests.cluster.operator_harness import OperatorProcess, ensure_namespace, install_chart, service_account_kubeconfig
from tests.operator.builders import fuse_result, spec

pytestmark = pytest.mark.cluster

NAMESPACE = "datarun-metrics"
BURST = 500
SIDECAR_IMAGE = "localhost/datarun-sidecar:test"


@pytest.fixture(scope="module")
def metered(
    control_plane: Cluster, tmp_path_factory: pytest.TempPathFactory, kube_api: kubernetes.client.ApiClient
) -> Iterator[tuple[OperatorProcess, int]]:
    install_chart(control_plane)
    root = tmp_path_factory.mktemp("store")
    data = tmp_path_factory.mktemp("input")
    (data / "numbers.txt").write_text("1 2 3\n")
    with connect(f"file://{root}") as client:
        client.create_repo("in", "inputs")
        client.create_repo("out", "outputs")
        client.upload("in", str(data), "numbers", label="v1")
    work = tmp_path_factory.mktemp("operator")
    port = free_port()
    proc = OperatorProcess(
        service_account_kubeconfig(control_plane, work / "kubeconfig"),
        work,
        env={
            "DATARUN_OPERATOR_STORE_URL": f"file://{root}",
            "DATARUN_OPERATOR_SIDECAR_IMAGE": SIDECAR_IMAGE,
            "DATARUN_OPERATOR_WRAPPER_IMAGE": SIDECAR_IMAGE,
            "DATARUN_OPERATOR_RUN_POD_NODE_SELECTOR": '{"type": "kwok"}',
            "DATARUN_OPERATOR_METRICS_PORT": str(port),
            "DATARUN_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
        },
        namespaces=(NAMESPACE,),
    )
    ensure_namespace(kube_api, NAMESPACE)
    proc.start()
    try:
        yield proc, port
    finally:
        proc.stop()


def scrape(port: int) -> dict[str, float]:
    """Every sample of the scrape, keyed `name{label=value,...}`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def scraped_phases(port: int) -> dict[str, int]:
    got = scrape(port)
    return {k.split("phase=")[1][:-1]: int(v) for k, v in got.items() if k.startswith("datarun_dataruns{") and v}


def api_phases(custom: kubernetes.client.CustomObjectsApi) -> dict[str, int]:
    listing: Any = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
    return dict(Counter(str((i.get("status") or {}).get("phase") or "None") for i in listing["items"]))


def wait_match(port: int, custom: kubernetes.client.CustomObjectsApi, want: dict[str, int], timeout: float) -> None:
    """Until the API holds ``want`` and the scrape says the same."""
    deadline = time.monotonic() + timeout
    api: dict[str, int] = {}
    scraped: dict[str, int] = {}
    while time.monotonic() < deadline:
        api, scraped = api_phases(custom), scraped_phases(port)
        if api == want and scraped == api:
            return
        time.sleep(0.5)
    raise AssertionError(f"after {timeout:.0f}s: api {api}, scraped {scraped}, wanted {want}")


@pytest.mark.timeout(900)
def test_metrics_during_a_burst_match_the_phases(
    metered: tuple[OperatorProcess, int], kube_api: kubernetes.client.ApiClient
) -> None:
    operator, port = metered
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    names = [f"burst-{i}" for i in range(BURST)]
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append(scraped_phases(port))
            time.sleep(0.25)

    def create(name: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataRun", "metadata": {"name": name}, "spec": spec()}
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    watcher = threading.Thread(target=sampler)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, names))
        wait_match(port, custom, {"Running": BURST}, timeout=240)
    finally:
        stop.set()
        watcher.join()
    # During the burst, every scrape counted at most the runs created, and it went up to all of them.
    assert samples and all(sum(s.values()) <= BURST for s in samples)
    assert any(0 < sum(s.values()) < BURST or s.get("Pending", 0) for s in samples) or len(samples) < 3

    # Half of them finish: Succeeded by the kubelet stand-in; the scrape follows the API server.
    message = fuse_result([{"name": "result", "repo": "out", "path": "/data/out/result", "bundle": "b"}])
    done = names[: BURST // 2]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: finish_pod(core, NAMESPACE, f"{n}-run", {FUSE: ContainerEnd(0, message)}), done))
    wait_match(port, custom, {"Running": BURST - len(done), "Succeeded": len(done)}, timeout=240)
    got = scrape(port)
    assert got["datarun_pod_create_seconds_count{}"] >= BURST
    assert got["datarun_pin_seconds_count{}"] >= BURST
    assert got["datarun_run_seconds_count{phase=Succeeded}"] == len(done)
    print(f"\n{len(samples)} scrapes during the burst; final {scraped_phases(port)}")

    # Deleting them empties the gauge.
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
    wait_match(port, custom, {}, timeout=240)
    assert operator.popen is not None and operator.popen.poll() is None
