"""DataRuns on a real kubelet + containerd node, driven only by ``helm`` and ``kubectl``, as a user would.

The chart is installed once per session (conftest.py); each test applies an example (or a variant of it, named
for what it changes) into the ``runs`` namespace and waits with ``kubectl wait``. The store is fake-gcs-server on
the host; the test checks what the run left there through datarun's public API.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from datarun.runs import CACHED, SUCCEEDED
from tests.node.conftest import NodeStore
from tests.node.node import STATE_DIR, NodeCluster
from tests.node.release import OPERATOR_NAMESPACE, ROOT, RUN_NAMESPACE, local_images

# The first test also starts the node, imports the images and installs the chart (about 100 s here).
pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(600)]

WAIT = "300s"


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / name).read_text()))


def apply(node: NodeCluster, manifest: dict[str, Any]) -> None:
    node.kubectl("apply", "-n", RUN_NAMESPACE, "-f", "-", stdin=json.dumps(manifest))


def wait_phase(node: NodeCluster, name: str, phase: str, timeout: str = WAIT) -> dict[str, Any]:
    try:
        node.kubectl("wait", "-n", RUN_NAMESPACE, f"dr/{name}", f"--for=jsonpath={{.status.phase}}={phase}",
                     f"--timeout={timeout}", timeout=float(timeout.rstrip("s")) + 30)  # fmt: skip
    except Exception as err:
        raise AssertionError(f"{err}\n{diagnose(node, name)}") from None
    return dict(node.get_json("-n", RUN_NAMESPACE, f"dr/{name}"))


def diagnose(node: NodeCluster, name: str) -> str:
    """What a failed wait shows: the DataRun, its pod's containers, the operator's log tail."""
    parts = [node.kubectl("get", "-n", RUN_NAMESPACE, f"dr/{name}", "-o", "yaml", check=False)]
    parts.append(node.kubectl("get", "pods", "-A", "-o", "wide", check=False))
    parts.append(node.kubectl("describe", "pods", "-n", RUN_NAMESPACE, check=False)[-6000:])
    parts.append(node.kubectl("logs", "-n", OPERATOR_NAMESPACE, "deploy/datarun", "--tail=40", check=False))
    return "\n".join(parts)


def greetings(store: NodeStore, tmp_path: Path) -> None:
    """Repo `greetings` with label v1 (two files) and an empty `greetings-out`, as examples/hello-world.yaml says."""
    for repo in ("greetings", "greetings-out"):
        if repo not in {r.name for r in store.client.list_repos()}:
            store.client.create_repo(repo)
    src = tmp_path / "hello"
    src.mkdir()
    (src / "en.txt").write_text("hello\n")
    (src / "fr.txt").write_text("bonjour\n")
    store.client.upload("greetings", src, "two greetings", label="v1")


def read_label(store: NodeStore, repo: str, label: str, tmp_path: Path) -> dict[str, str]:
    bundle = store.client.get_bundle(repo, store.client.get_label(repo, label).bundle)
    out = tmp_path / f"{repo}-{label}"
    store.client.download(bundle, out)
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def fuse_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - fuse" in line and str(STATE_DIR) in line]


def test_hello_world_reads_a_fuse_mount_through_mount_propagation(
    node: NodeCluster, store: NodeStore, release: str, tmp_path: Path
) -> None:
    greetings(store, tmp_path)
    manifest = example("hello-world.yaml")
    assert manifest["spec"]["inputs"][0]["mode"] == "mount"
    apply(node, manifest)
    run = wait_phase(node, "hello-world", "Succeeded")
    assert read_label(store, "greetings-out", "latest", tmp_path) == {"en.txt": "HELLO\n", "fr.txt": "BONJOUR\n"}
    outputs = run["status"]["outputs"]
    assert [o["repo"] for o in outputs] == ["greetings-out"]
    assert outputs[0]["bundle"] == store.client.get_label("greetings-out", "latest").bundle
    # `kubectl get dr` shows the labelled bundle in its Outputs column.
    table = node.kubectl("get", "dr", "-n", RUN_NAMESPACE, "hello-world")
    assert f"shouted={outputs[0]['bundle']}" in table, table
    # The app's container saw the FUSE mount (the fuse sidecar mounted it; Bidirectional propagation carried it).
    pod = node.get_json("-n", RUN_NAMESPACE, "pod", run["status"]["podName"])
    fuse = [c for c in pod["spec"]["containers"] if any(m.get("mountPropagation") for m in c.get("volumeMounts", []))]
    assert fuse, "no container of the run pod uses mount propagation"
    assert fuse_mounts() == [], "the finished run left a FUSE mount behind"


def test_download_mode(node: NodeCluster, store: NodeStore, release: str, tmp_path: Path) -> None:
    if "greetings" not in {r.name for r in store.client.list_repos()}:
        greetings(store, tmp_path)
    manifest = example("hello-world.yaml")
    manifest["metadata"]["name"] = "hello-download"
    manifest["spec"]["inputs"][0]["mode"] = "download"
    manifest["spec"]["outputs"][0]["label"] = "downloaded"
    apply(node, manifest)
    run = wait_phase(node, "hello-download", "Succeeded")
    assert read_label(store, "greetings-out", "downloaded", tmp_path) == {"en.txt": "HELLO\n", "fr.txt": "BONJOUR\n"}
    pod = node.get_json("-n", RUN_NAMESPACE, "pod", run["status"]["podName"])
    privileged = [c["name"] for c in pod["spec"]["containers"] if c.get("securityContext", {}).get("privileged")]
    assert privileged == [], "a download-only run needs no privileged container"


def test_failing_app_fails_the_run_and_moves_no_label(
    node: NodeCluster, store: NodeStore, release: str, tmp_path: Path
) -> None:
    store.client.create_repo("failing-out")
    manifest = example("hello-world.yaml")
    manifest["metadata"]["name"] = "hello-fails"
    manifest["spec"]["inputs"] = []
    manifest["spec"]["args"] = ['echo "no such greeting" >&2; exit 3']
    manifest["spec"]["outputs"][0]["repo"] = "failing-out"
    apply(node, manifest)
    run = wait_phase(node, "hello-fails", "Failed")
    status = run["status"]
    assert "3" in f"{status.get('reason')} {status.get('message')}", status
    assert store.client.list_labels("failing-out") == []


def test_postgres_restored_from_a_bundle_and_dumped(
    node: NodeCluster, store: NodeStore, release: str, tmp_path: Path
) -> None:
    for repo in ("inventory-db", "inventory-reports"):
        store.client.create_repo(repo)
    manifest = example("postgres.yaml")
    # The first dump: the same run without a source (an empty database), as the example's comment says.
    seed = copy.deepcopy(manifest)
    seed["metadata"]["name"] = "inventory-seed"
    del seed["spec"]["databases"][0]["sourceRepo"], seed["spec"]["databases"][0]["sourceLabel"]
    apply(node, seed)
    wait_phase(node, "inventory-seed", "Succeeded")
    first = store.client.get_label("inventory-db", "latest").bundle
    assert read_label(store, "inventory-reports", "latest", tmp_path / "1") == {"stock.txt": "apples|10\n"}
    apply(node, manifest)
    wait_phase(node, "inventory-nightly", "Succeeded")
    assert store.client.get_label("inventory-db", "latest").bundle != first
    assert read_label(store, "inventory-reports", "latest", tmp_path / "2") == {"stock.txt": "apples|20\n"}


def test_argo_style_pod_injected_by_the_webhook(
    node: NodeCluster, store: NodeStore, release: str, tmp_path: Path
) -> None:
    """A plain Pod labelled and annotated as examples/argo/annotated-steps.yaml's `shout` step is."""
    if "greetings" not in {r.name for r in store.client.list_repos()}:
        greetings(store, tmp_path)
    template = next(t for t in example("argo/annotated-steps.yaml")["spec"]["templates"] if t["name"] == "shout")
    annotations = {k: v.replace("{{inputs.parameters.label}}", "v1").replace("{{workflow.name}}", "a pod")
                   for k, v in template["metadata"]["annotations"].items()}  # fmt: skip
    # Off, so that this pod is not the cached twin of the workflow's `shout` step in the test below.
    annotations["datarun.io/cache"] = '{policy: "off"}'
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shout-step", "labels": template["metadata"]["labels"], "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", **template["container"]}]},
    }
    apply(node, pod)
    created = node.get_json("-n", RUN_NAMESPACE, "pod", "shout-step")
    assert created["metadata"]["annotations"].get("datarun.io/injected"), "the webhook did not inject the pod"
    assert len(created["spec"]["containers"]) > 1
    node.kubectl("wait", "-n", RUN_NAMESPACE, "pod/shout-step", "--for=jsonpath={.status.phase}=Succeeded",
                 f"--timeout={WAIT}", timeout=330)  # fmt: skip
    assert read_label(store, "greetings-out", "shouted", tmp_path) == {"en.txt": "HELLO\n", "fr.txt": "BONJOUR\n"}


def _sleeper(name: str, seconds: int) -> dict[str, Any]:
    manifest = example("hello-world.yaml")
    manifest["metadata"]["name"] = name
    manifest["spec"]["args"] = [f'ls "$DATARUN_INPUT_GREETINGS" >/dev/null; sleep {seconds}; echo done > '
                                '"$DATARUN_OUTPUT_SHOUTED/done.txt"']  # fmt: skip
    manifest["spec"]["outputs"][0]["label"] = name
    return manifest


# First seen on this node with the old sidecars: the fuse sidecar ended on SIGTERM without unmounting, and the
# kubelet then retried for ever to tear down the data volume ("UnmountVolume.TearDown failed ... transport endpoint
# is not connected"), the pod stuck Terminating. With the one sidecar lifecycle (protocol.run_lifecycle), SIGTERM
# unwinds through its `finally`, which unmounts: this test guards that.
def test_deleting_a_running_datarun_stops_its_pod_and_leaves_no_mount(
    node: NodeCluster, store: NodeStore, release: str, tmp_path: Path
) -> None:
    if "greetings" not in {r.name for r in store.client.list_repos()}:
        greetings(store, tmp_path)
    apply(node, _sleeper("sleeper", 600))
    run = wait_phase(node, "sleeper", "Running")
    pod_name = run["status"]["podName"]

    def app_started() -> bool:
        pod = node.get_json("-n", RUN_NAMESPACE, "pod", pod_name)
        main = [s for s in pod["status"].get("containerStatuses", []) if s["name"] == "main"]
        return bool(main) and "running" in main[0].get("state", {})

    # The app's container starts before the fuse sidecar has mounted (its wrapper waits for the mount).
    deadline = time.monotonic() + 120
    while not (app_started() and fuse_mounts()):
        assert time.monotonic() < deadline, f"no FUSE mount on the node under {STATE_DIR}\n{diagnose(node, 'sleeper')}"
        time.sleep(1)
    grace = node.get_json("-n", RUN_NAMESPACE, "pod", pod_name)["spec"]["terminationGracePeriodSeconds"]
    node.kubectl("delete", "-n", RUN_NAMESPACE, "dr/sleeper", "--wait=true", "--timeout=120s", timeout=150)
    # The grace period, then a margin for the kubelet to tear the pod down.
    node.kubectl("wait", "-n", RUN_NAMESPACE, f"pod/{pod_name}", "--for=delete", f"--timeout={grace + 45}s",
                 check=False, timeout=grace + 75)  # fmt: skip
    left = node.kubectl("get", "-n", RUN_NAMESPACE, "pod", pod_name, "--ignore-not-found", "-o", "name")
    teardown = [line for line in node.logs("kubelet", 400).splitlines() if "TearDown failed" in line]
    assert not left.strip(), (
        f"pod {pod_name} still there {grace + 45} s after the delete; kubelet: {teardown[-1:] or 'no TearDown error'}"
    )
    assert fuse_mounts() == [], f"orphan FUSE mount after the delete: {fuse_mounts()}"
    assert "sleeper" not in {label.name for label in store.client.list_labels("greetings-out")}


def test_operator_pod_killed_mid_run(node: NodeCluster, store: NodeStore, release: str, tmp_path: Path) -> None:
    if "greetings" not in {r.name for r in store.client.list_repos()}:
        greetings(store, tmp_path)
    apply(node, _sleeper("survivor", 20))
    wait_phase(node, "survivor", "Running")
    before = node.get_json("pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=datarun")["items"]
    node.kubectl("delete", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=datarun",
                 "--grace-period=0", "--force")  # fmt: skip
    run = wait_phase(node, "survivor", "Succeeded")
    after = node.get_json("pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=datarun")["items"]
    assert {p["metadata"]["uid"] for p in after}.isdisjoint({p["metadata"]["uid"] for p in before})
    assert run["status"]["outputs"][0]["bundle"] == store.client.get_label("greetings-out", "survivor").bundle
    assert read_label(store, "greetings-out", "survivor", tmp_path) == {"done.txt": "done\n"}


def wait_workflow(node: NodeCluster, name: str, timeout: float = 300) -> dict[str, Any]:
    """Polls the Workflow until it ends; a failure shows its nodes' messages and the step pods."""
    deadline = time.monotonic() + timeout
    while True:
        wf = dict(node.get_json("-n", RUN_NAMESPACE, "wf", name))
        phase = wf.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed", "Error") or time.monotonic() > deadline:
            break
        time.sleep(2)
    if phase != "Succeeded":
        nodes = {
            n.get("displayName"): (n.get("phase"), n.get("message")) for n in wf["status"].get("nodes", {}).values()
        }
        raise AssertionError(f"workflow {name}: {phase} {wf['status'].get('message')} {nodes}\n"
                             + node.kubectl("describe", "pods", "-n", RUN_NAMESPACE, check=False)[-6000:]
                             + node.logs("workflow-controller", 30))  # fmt: skip
    return wf


def submit(node: NodeCluster, template: str, name: str) -> None:
    """What `argo submit --from workflowtemplate/TEMPLATE -p label=v1` creates."""
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "workflowTemplateRef": {"name": template},
            "arguments": {"parameters": [{"name": "label", "value": "v1"}]},
        },
    }
    node.kubectl("create", "-n", RUN_NAMESPACE, "-f", "-", stdin=json.dumps(workflow))


def test_argo_workflow_of_examples_argo(node: NodeCluster, store: NodeStore, release: str, tmp_path: Path) -> None:
    """Argo's own workflow-controller and argoexec run both examples/argo templates, unchanged but for the store
    URL: a step whose sidecars are written out, then two steps injected by the webhook, the second reading the
    label the first moved."""
    node.start_argo()
    node.allow_executor(RUN_NAMESPACE)
    if "greetings" not in {r.name for r in store.client.list_repos()}:
        greetings(store, tmp_path)
    for repo in ("greetings-out", "greetings-counts"):
        if repo not in {r.name for r in store.client.list_repos()}:
            store.client.create_repo(repo)
    # The image explicit-sidecars.yaml names, as the local sidecar image (no registry; IfNotPresent finds it).
    node.ctr("images", "tag", "--force", local_images().sidecar, "ghcr.io/datarun/sidecar:0.1.0")
    for name in ("explicit-sidecars.yaml", "annotated-steps.yaml"):
        text = (ROOT / "examples" / "argo" / name).read_text().replace("az://ACCOUNT/CONTAINER", store.url)
        node.kubectl("apply", "-n", RUN_NAMESPACE, "-f", "-", stdin=text)

    before = {label.name: label.bundle for label in store.client.list_labels("greetings-out")}
    submit(node, "datarun-explicit-sidecars", "explicit")
    wait_workflow(node, "explicit")
    latest = store.client.get_label("greetings-out", "latest").bundle
    assert latest != before.get("latest"), "the explicit step moved no label"
    assert read_label(store, "greetings-out", "latest", tmp_path / "1") == {"en.txt": "HELLO\n", "fr.txt": "BONJOUR\n"}
    assert "explicit" in store.client.get_bundle("greetings-out", latest).message

    submit(node, "datarun-annotated-steps", "annotated")
    wf = wait_workflow(node, "annotated")
    steps = {n["displayName"] for n in wf["status"]["nodes"].values() if n.get("type") == "Pod"}
    assert steps == {"shout", "count"}, steps
    shouted = store.client.get_label("greetings-out", "shouted").bundle
    assert "annotated" in store.client.get_bundle("greetings-out", shouted).message
    counts = read_label(store, "greetings-counts", "latest", tmp_path / "2")["counts.txt"]
    # `count` read the bundle `shout` labelled: upper-case files of 6 and 8 bytes.
    assert [line.split()[0] for line in counts.splitlines()] == ["6", "8", "14"], counts
    pods = node.get_json("pods", "-n", RUN_NAMESPACE, "-l", "workflows.argoproj.io/workflow=annotated")["items"]
    assert pods and all(p["metadata"]["annotations"].get("datarun.io/injected") for p in pods)

    # The run cache: the same workflow again finds both steps' identical twins (the template says
    # trustTags for its busybox tag). Neither app runs; the labels stay on the reused bundles, and
    # each step's fuse sidecar reports a Cached run linking the earlier one.
    counted = store.client.get_label("greetings-counts", "latest").bundle
    submit(node, "datarun-annotated-steps", "annotated-again")
    wait_workflow(node, "annotated-again")
    again = node.get_json("pods", "-n", RUN_NAMESPACE, "-l", "workflows.argoproj.io/workflow=annotated-again")["items"]
    assert len(again) == 2, [p["metadata"]["name"] for p in again]
    for pod in again:
        name = pod["metadata"]["name"]
        log = node.kubectl("logs", "-n", RUN_NAMESPACE, name, "-c", "main")
        assert "cache hit" in log and "the app is not started" in log, log
        fuse = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "datarun-fuse")
        result = json.loads(fuse["state"]["terminated"]["message"])
        cached = store.client.runs.get(result["run"])
        assert cached.phase == CACHED and cached.cache is not None and cached.cache.cached_from, name
        assert store.client.runs.get(cached.cache.cached_from).phase == SUCCEEDED
    assert store.client.get_label("greetings-out", "shouted").bundle == shouted
    assert store.client.get_label("greetings-counts", "latest").bundle == counted
