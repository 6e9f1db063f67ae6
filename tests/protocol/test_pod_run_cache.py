"""The run cache of a webhook-injected pod (an Argo step), with the real wrapper and fuse sidecar.

The plan is what the webhook puts in the fuse sidecar's env (``DATARUN_CACHE_PLAN``); these tests
write it directly, for the sidecar's own ``-d`` commands. tests/containers/test_pods.py runs the
same through the webhook's patch in real containers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from typing import Any

from datarun.cache import ENV_CACHE_PLAN, CachePlan, PlanInput, PlanOutput
from datarun.layout import bundle_key
from datarun.repo import Client
from datarun.runs import CACHED, SUCCEEDED
from datarun.store import LocalStore
from tests.protocol.pods import Pod, fuse_commands

APP = "awk '{s+=$1} END {print s}' mnt/numbers.txt > outdir/sum.txt; echo ran >> runs.log"


def plan(image: str = "busybox@sha256:" + "ab" * 32, policy: str = "use", trust_tags: bool = False) -> CachePlan:
    return CachePlan(
        policy=policy,
        image=image,
        command=("sh", "-c", APP),
        trust_tags=trust_tags,
        env={"MODE": "fast"},
        inputs=(PlanInput("numbers", "in/numbers"),),
        outputs=(PlanOutput("result", "out", "out/result", "latest"),),
        versions={"wrapper": "w:1", "sidecar": "s:1"},
    )


def step(pod: Pod, cache_plan: CachePlan | str | None) -> tuple[int, str, str, dict[str, Any]]:
    """One pod: a fresh coordination folder and output folder, as every Argo step gets.
    Returns (wrapper code, wrapper stderr, sidecar stderr, result.json)."""
    shutil.rmtree(pod.coord, ignore_errors=True)
    shutil.rmtree(pod.tmp / "outdir", ignore_errors=True)
    (pod.tmp / "outdir").mkdir()
    if cache_plan is None:
        pod.env.pop(ENV_CACHE_PLAN, None)
    else:
        pod.env[ENV_CACHE_PLAN] = cache_plan if isinstance(cache_plan, str) else cache_plan.to_json()
    sidecar = pod.sidecar(*fuse_commands(pod))
    done = pod.wrap(APP)
    assert sidecar.wait(timeout=60) in (0, 1)
    assert sidecar.stderr is not None
    return done.returncode, done.stderr, sidecar.stderr.read().decode(), dict(pod.result())


def app_runs(pod: Pod) -> int:
    log = pod.tmp / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def client_of(pod: Pod) -> Client:
    return Client(LocalStore(pod.store), cache_dir=pod.tmp / "cache-check")


def cached_from(client: Client, run_id: str) -> str | None:
    stamp = client.runs.get(run_id).cache
    assert stamp is not None
    return stamp.cached_from


def test_an_identical_second_step_reuses_the_outputs_and_does_not_start_the_app(pod: Pod) -> None:
    code, _, err, first = step(pod, plan())
    assert code == 0, err
    assert app_runs(pod) == 1
    assert "entered" in err, err
    client = client_of(pod)
    original = client.runs.get(str(first["run"]))
    assert original.phase == SUCCEEDED and original.cache is not None
    assert [o.name for o in original.outputs] == ["result"], "outputs carry the plan's names, as the key does"
    bundle = original.outputs[0].bundle
    # Someone moves the label meanwhile; a hit moves it back to the reused bundle.
    other = pod.tmp / "other"
    other.mkdir()
    (other / "x").write_text("x")
    client.upload("out", other, "elsewhere", label="latest")

    code, wrapped, err, second = step(pod, plan())
    assert code == 0, err
    assert app_runs(pod) == 1, "the app did not run a second time"
    assert "cache hit" in wrapped
    assert (pod.tmp / "outdir" / "sum.txt").read_text() == "6\n", "the earlier output is where the app writes it"
    assert not os.path.ismount(pod.tmp / "mnt")
    assert second["status"] == "ok" and second["appExitCode"] == 0
    outputs = second["outputs"]
    assert isinstance(outputs, list) and [(o["name"], o["bundle"], o["uploaded"]) for o in outputs] == [
        ("result", bundle, False)
    ]
    assert client.get_label("out", "latest").bundle == bundle
    cached = client.runs.get(str(second["run"]))
    assert cached.phase == CACHED and cached.cache is not None and cached.cache.cached_from == original.id
    assert [o.bundle for o in cached.outputs] == [bundle]
    assert [i.bundle for i in cached.inputs] == [pod.input_bundle]
    skip = (pod.coord / "fuse" / "skip").read_text().splitlines()
    assert json.loads(skip[1])["cachedFrom"] == original.id
    assert json.loads((pod.tmp / "termination-log").read_text())["run"] == cached.id


def test_a_changed_input_env_or_version_runs_again_and_reuploading_the_same_input_hits(pod: Pod) -> None:
    assert step(pod, plan())[0] == 0
    client = client_of(pod)
    changed = pod.tmp / "changed"
    changed.mkdir()
    (changed / "numbers.txt").write_text("1\n2\n3\n4\n")
    client.upload("in", changed, "new numbers", label="v1")
    assert step(pod, plan())[0] == 0
    assert app_runs(pod) == 2
    assert (pod.tmp / "outdir" / "sum.txt").read_text() == "10\n"

    # The same bytes again under a new bundle id: the key is the manifest, so this hits.
    client.upload("in", changed, "the same numbers, uploaded again", label="v1")
    assert step(pod, plan())[0] == 0
    assert app_runs(pod) == 2

    assert step(pod, replace(plan(), env={"MODE": "slow"}))[0] == 0
    assert app_runs(pod) == 3
    assert step(pod, replace(plan(), versions={"wrapper": "w:1", "sidecar": "s:2"}))[0] == 0
    assert app_runs(pod) == 4
    assert step(pod, replace(plan(), salt="v2"))[0] == 0
    assert app_runs(pod) == 5


def test_a_tag_image_always_runs_unless_tags_are_trusted(pod: Pod) -> None:
    code, _, err, _ = step(pod, plan(image="busybox:1.36"))
    assert code == 0 and "is a tag" in err, err
    assert step(pod, plan(image="busybox:1.36"))[0] == 0
    assert app_runs(pod) == 2
    assert step(pod, plan(image="busybox:1.36", trust_tags=True))[0] == 0
    assert step(pod, plan(image="busybox:1.36", trust_tags=True))[0] == 0
    assert app_runs(pod) == 3


def test_refresh_runs_and_records_and_a_failed_or_deleted_run_is_not_reused(pod: Pod) -> None:
    _, _, _, first = step(pod, plan(policy="refresh"))
    _, _, _, second = step(pod, plan(policy="refresh"))
    assert app_runs(pod) == 2
    code, _, _, result = step(pod, plan())
    assert code == 0 and app_runs(pod) == 2, "refresh entered its runs"
    client = client_of(pod)
    assert cached_from(client, result["run"]) == second["run"]

    # The newest run's output bundle is deleted: the lookup says why and falls back to the older run.
    newest = client.runs.get(str(second["run"])).outputs[0].bundle
    (pod.store / bundle_key("out", newest)).unlink()
    code, _, err, result = step(pod, plan())
    assert code == 0 and app_runs(pod) == 2
    assert f"run {second['run']} not reused" in err and "no longer exists" in err, err
    assert cached_from(client, result["run"]) == first["run"]
    # With both gone, it misses and runs.
    (pod.store / bundle_key("out", client.runs.get(str(first["run"])).outputs[0].bundle)).unlink()
    assert step(pod, plan())[0] == 0
    assert app_runs(pod) == 3

    # A failing app is never entered: two identical failing steps both run.
    broken = replace(plan(), command=("sh", "-c", "exit 3"))
    for _ in range(2):
        shutil.rmtree(pod.coord, ignore_errors=True)
        pod.env[ENV_CACHE_PLAN] = broken.to_json()
        sidecar = pod.sidecar(*fuse_commands(pod))
        done = pod.wrap("echo ran >> runs.log; exit 3")
        assert done.returncode == 3
        assert sidecar.wait(timeout=60) == 0
    assert app_runs(pod) == 5


def test_a_plan_the_sidecar_cannot_read_stops_the_pod_before_the_app(pod: Pod) -> None:
    code, wrapped, _, result = step(pod, '{"format": 99}')
    assert code == 76
    assert app_runs(pod) == 0
    assert ENV_CACHE_PLAN in wrapped and "different versions" in wrapped
    assert result["status"] == "failed"


def test_without_a_plan_the_pod_runs_as_before(pod: Pod) -> None:
    for _ in range(2):
        code, _, _, result = step(pod, None)
        assert code == 0
        assert [o["name"] for o in result["outputs"]] == ["latest"]
    assert app_runs(pod) == 2


def test_a_step_whose_earlier_output_was_invalidated_runs_again(pod: Pod) -> None:
    """(An invalidated *input* is refused by the mount itself, before the cache is asked.)"""
    _, _, _, first = step(pod, plan())
    outputs = first["outputs"]
    assert isinstance(outputs, list)
    invalidate = [sys.executable, "-m", "datarun.cli.main", "--store", f"file://{pod.store}", "invalidate"]
    invalidate += ["--repo", "out", "--bundle", outputs[0]["bundle"], "--reason", "bad labels"]
    subprocess.run(invalidate, env=pod.env, check=True, capture_output=True, timeout=120)
    code, _, err, _ = step(pod, plan())
    assert code == 0 and app_runs(pod) == 2
    assert "invalidated" in err and "bad labels" in err, err
