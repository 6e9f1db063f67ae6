"""The pod builder and the result parser, checked against the real sidecar parsers and wrapper."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import datarun_sidecar.cli as sidecar_cli
import datarun_sidecar.postgres as sidecar_postgres
from datarun_operator import wire
from datarun_operator.builder import ANNOTATION_OUTPUTS, FUSE, INIT, MAIN, POSTGRES, get_pod
from datarun_operator.models import Phase, SpecError
from datarun_operator.result import parse_pod_result
from datarun_operator.settings import PodSettings, Settings, StoreSettings
from datarun_operator.wire import serialize_map
from datarun_sidecar.fuse import FusePlan
from datarun_sidecar.postgres_plan import PostgresPlan
from datarun_sidecar.serialmap import parse_serialized_map
from tests.operator.builders import (
    BUNDLE_A,
    BUNDLE_B,
    BUNDLE_DB,
    BUNDLE_OUT,
    UID,
    fuse_result,
    run,
    spec,
    terminated,
    with_status,
)

ROOT = Path(__file__).resolve().parents[2]
PINNED = {"numbers": BUNDLE_A}


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def mount_of(container: dict[str, Any], volume: str) -> dict[str, Any]:
    return next(m for m in container["volumeMounts"] if m["name"] == volume)


def db_spec() -> dict[str, Any]:
    return spec(
        databases=[
            {
                "name": "inventory",
                "port": 5433,
                "sourceRepo": "dbs",
                "sourceLabel": "latest",
                "outputRepo": "dbs",
                "outputLabel": "latest",
                "outputMessage": "nightly; with: separators|and,more",
            }
        ]
    )


# -- the pod's shape ---------------------------------------------------------------------------


def test_identity_labels_owner_and_restart_policy(settings: Settings) -> None:
    pod = get_pod(run(), PINNED, settings)
    meta = pod["metadata"]
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert (meta["name"], meta["namespace"]) == ("job-run", "team")
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "datarun-operator", "datarun.io/run": "job"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "datarun.io/v1alpha1",
            "kind": "DataRun",
            "name": "job",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert list(containers(pod)) == [MAIN, FUSE, INIT]


def test_the_same_run_always_builds_the_same_pod(settings: Settings) -> None:
    assert get_pod(run(), PINNED, settings) == get_pod(run(), PINNED, settings)


def test_only_the_fuse_sidecar_is_privileged(settings: Settings) -> None:
    pod = get_pod(run(db_spec()), {**PINNED, "inventory": BUNDLE_DB}, settings)
    privileged = [name for name, c in containers(pod).items() if (c.get("securityContext") or {}).get("privileged")]
    assert privileged == [FUSE]
    assert set(containers(pod)) == {MAIN, FUSE, POSTGRES, INIT}


def test_mount_propagation_bidirectional_in_the_sidecar_host_to_container_in_the_app(settings: Settings) -> None:
    pod = get_pod(run(), PINNED, settings)
    c = containers(pod)
    assert mount_of(c[FUSE], "datarun-data") == {
        "name": "datarun-data",
        "mountPath": "/data",
        "mountPropagation": "Bidirectional",
    }
    assert mount_of(c[MAIN], "datarun-data")["mountPropagation"] == "HostToContainer"
    assert "mountPropagation" not in mount_of(c[INIT], "datarun-data")


def test_download_only_runs_have_no_privileged_container_and_no_propagation(settings: Settings) -> None:
    raw = spec(inputs=[{"name": "numbers", "repo": "in", "label": "v1", "path": "in", "mode": "download"}])
    pod = get_pod(run(raw), PINNED, settings)
    for name, c in containers(pod).items():
        assert not (c.get("securityContext") or {}).get("privileged"), name
        for mount in c.get("volumeMounts", []):
            assert "mountPropagation" not in mount, name


def test_store_credentials_come_from_the_secret_never_inline(settings: Settings) -> None:
    pod = get_pod(run(db_spec()), {**PINNED, "inventory": BUNDLE_DB}, settings)
    c = containers(pod)
    for name in (FUSE, POSTGRES):
        assert c[name]["envFrom"] == [{"secretRef": {"name": "datarun-store"}}]
    assert "envFrom" not in c[MAIN], "the app gets no store credentials"
    text = json.dumps(pod)
    for secret_var in ("AZURE_STORAGE_CONNECTION_STRING", "AccountKey", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert secret_var not in text


def test_a_credential_file_is_a_mounted_secret_key(settings: Settings) -> None:
    settings = replace(
        settings, store=StoreSettings(url="gs://b", credentials_secret="gcs", credentials_file_key="key.json")
    )
    pod = get_pod(run(), PINNED, settings)
    fuse = containers(pod)[FUSE]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "datarun-credentials")
    assert volume["secret"]["secretName"] == "gcs"
    assert volume["secret"]["items"] == [{"key": "key.json", "path": "credential"}]
    assert mount_of(fuse, "datarun-credentials")["readOnly"] is True
    assert env_of(fuse)["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/datarun/credential"
    assert "datarun-credentials" not in [m["name"] for m in containers(pod)[MAIN]["volumeMounts"]]


def test_sidecars_report_through_the_termination_log(settings: Settings) -> None:
    pod = get_pod(run(db_spec()), {**PINNED, "inventory": BUNDLE_DB}, settings)
    c = containers(pod)
    for name in (FUSE, POSTGRES):
        assert c[name]["terminationMessagePath"] == "/dev/termination-log"
        assert c[name]["terminationMessagePolicy"] == "File"
        assert env_of(c[name])["DATARUN_TERMINATION_LOG"] == "/dev/termination-log"
    assert c[MAIN]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_app_is_wrapped_and_told_where_its_data_is(settings: Settings) -> None:
    raw = spec(params={"who": "world"}, env=[{"name": "MODE", "value": "fast"}])
    main = containers(get_pod(run(raw), PINNED, settings))[MAIN]
    assert main["image"] == "busybox:1.36"
    assert main["command"] == [
        "/datarun/bin/wrap_application.sh",
        "-c",
        "/coord",
        "-b",
        "fuse",
        "-r",
        "600",
        "-u",
        "0",
        "-h",
        "30",
        "--",
        "sh",
        "-c",
        "cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/",
    ]
    assert "args" not in main
    env = env_of(main)
    assert env["MODE"] == "fast"
    assert env["DATARUN_INPUT_NUMBERS"] == "/data/in/numbers"
    assert env["DATARUN_OUTPUT_RESULT"] == "/data/out/result"
    assert env["DATARUN_PARAM_who"] == "world"
    assert mount_of(main, "datarun-bin")["readOnly"] is True


def test_the_init_container_copies_the_wrapper_and_makes_the_folders(settings: Settings) -> None:
    init = containers(get_pod(run(), PINNED, settings))[INIT]
    assert init["image"] == settings.images.wrapper
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][2]
    assert "cp /usr/local/bin/wrap_application.sh /datarun/bin/wrap_application.sh" in script
    assert "chmod 0755 /datarun/bin/wrap_application.sh" in script
    assert "mkdir -p /data/in/numbers /data/out/result" in script


def test_a_run_without_data_is_a_plain_pod(settings: Settings) -> None:
    pod = get_pod(run(spec(inputs=[], outputs=[])), {}, replace(settings, store=StoreSettings()))  # no store needed
    assert list(containers(pod)) == [MAIN]
    assert containers(pod)[MAIN]["command"] == ["sh", "-c", "cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["datarun-params"], "only params.json"


def test_postgres_only_runs_wrap_with_postgres_only(settings: Settings) -> None:
    raw = spec(inputs=[], outputs=[], databases=[{"name": "db", "port": 5432}])
    pod = get_pod(run(raw), {}, settings)
    assert set(containers(pod)) == {MAIN, POSTGRES, INIT}
    command = containers(pod)[MAIN]["command"]
    assert command[command.index("-b") : command.index("-b") + 2] == ["-b", "postgres"]
    assert command.count("-b") == 1


def test_no_store_names_the_field(settings: Settings) -> None:
    with pytest.raises(SpecError) as caught:
        get_pod(run(), PINNED, replace(settings, store=StoreSettings()))
    assert caught.value.field_path == "spec.store.url"


def test_the_spec_store_overrides_the_default(settings: Settings) -> None:
    raw = spec(store={"url": "gs://other", "credentialsSecret": "other-creds"})
    fuse = containers(get_pod(run(raw), PINNED, settings))[FUSE]
    assert fuse["envFrom"] == [{"secretRef": {"name": "other-creds"}}]
    assert fuse["command"][fuse["command"].index("--store") + 1] == "gs://other"


def test_unpinned_inputs_are_a_bug_not_a_pod(settings: Settings) -> None:
    with pytest.raises(ValueError, match="numbers"):
        get_pod(run(), {}, settings)


def test_run_pod_service_account_labels_and_annotations(settings: Settings) -> None:
    settings = replace(
        settings,
        pod=PodSettings(
            service_account="runner", labels={"azure.workload.identity/use": "true"}, annotations={"a": "b"}
        ),
    )
    pod = get_pod(run(), PINNED, settings)
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["metadata"]["annotations"]["a"] == "b"
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_run_pod_node_selector_and_tolerations(settings: Settings) -> None:
    toleration = {"key": "batch", "operator": "Exists", "effect": "NoSchedule"}
    settings = replace(settings, pod=PodSettings(node_selector={"pool": "batch"}, tolerations=(toleration,)))
    pod = get_pod(run(), PINNED, settings)
    assert pod["spec"]["nodeSelector"] == {"pool": "batch"}
    assert pod["spec"]["tolerations"] == [toleration]


def test_cache_volume_follows_the_spec(settings: Settings) -> None:
    pod = get_pod(run(spec(cache={"sizeLimit": "2Gi", "medium": "Memory"})), PINNED, settings)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "datarun-cache")
    assert volume["emptyDir"] == {"sizeLimit": "2Gi", "medium": "Memory"}
    assert env_of(containers(pod)[FUSE])["DATARUN_CACHE_DIR"] == "/datarun/cache"


# -- the builder and the sidecar agree ---------------------------------------------------------


class Recorder:
    """Stands in for FuseSidecar / PostgresSidecar: records what the real CLI parsed."""

    seen: list[tuple[Any, dict[str, Any]]] = []

    def __init__(self, first: Any, plan: Any = None, **kwargs: Any) -> None:
        Recorder.seen.append((plan if plan is not None else first, {"first": first, **kwargs}))

    def run(self) -> int:
        return 0


def test_the_fuse_sidecar_cli_parses_the_exact_command(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = spec(
        inputs=[
            {"name": "numbers", "repo": "in", "label": "v1", "path": "in/numbers"},
            {"name": "words", "repo": "in", "bundle": BUNDLE_B, "path": "in/words", "mode": "download"},
        ],
        outputs=[
            {"name": "result", "repo": "out", "path": "out/result", "label": "latest", "uploadOnFailure": True},
            {"name": "log", "repo": "logs", "path": "out/log", "message": "--tricky 'quoted' message; $(x)"},
        ],
    )
    pod = get_pod(run(raw), {"numbers": BUNDLE_A, "words": BUNDLE_B}, settings)
    command = containers(pod)[FUSE]["command"]
    assert command[:2] == ["datarun-sidecar", "fuse"]
    Recorder.seen = []
    monkeypatch.setattr(sidecar_cli, "FuseSidecar", Recorder)
    assert sidecar_cli.main(command[1:]) == 0
    plan, kwargs = Recorder.seen[0]
    assert isinstance(plan, FusePlan)
    assert str(kwargs["first"]) == "/coord"
    assert kwargs["store"] == "az://acct/data"
    assert str(kwargs["termination_log"]) == "/dev/termination-log"
    assert (kwargs["mount_timeout"], kwargs["app_heartbeat_timeout"]) == (300.0, 60.0)
    assert plan.config[:2] == ["config", "create"]
    assert "--store=az://acct/data" in plan.config
    assert [(m.repo, m.bundle, m.label, m.mountpoint, m.download) for m in plan.mounts] == [
        ("in", BUNDLE_A, "", "/data/in/numbers", False),  # the label is pinned: the sidecar gets the id
        ("in", BUNDLE_B, "", "/data/in/words", True),
    ]
    assert [(u.repo, u.path, u.label, u.upload_on_failure) for u in plan.uploads] == [
        ("out", "/data/out/result", "latest", True),
        ("logs", "/data/out/log", "", False),
    ]
    assert plan.uploads[0].message == "output result of DataRun team/job"
    assert plan.uploads[1].message == "--tricky 'quoted' message; $(x)"


def test_the_postgres_sidecar_parses_the_exact_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = get_pod(run(db_spec()), {**PINNED, "inventory": BUNDLE_DB}, settings)
    pg = containers(pod)[POSTGRES]
    assert not (pg.get("securityContext") or {}).get("privileged")
    for name, value in env_of(pg).items():
        if name.startswith("dm_pg_"):
            monkeypatch.setenv(name, value)
    Recorder.seen = []
    monkeypatch.setattr(sidecar_postgres, "PostgresSidecar", Recorder)
    assert sidecar_cli.main(pg["command"][1:]) == 0
    plan, kwargs = Recorder.seen[0]
    assert isinstance(plan, PostgresPlan)
    assert kwargs["store"] == "az://acct/data"
    assert str(plan.coord) == "/coord"
    (db,) = plan.databases
    assert (db.id, db.port, db.repo, db.label) == ("inventory", 5433, "dbs", "latest")
    assert (db.source_repo, db.source_bundle, db.source_label) == ("dbs", BUNDLE_DB, "")
    assert db.message == "nightly; with: separators|and,more"
    main_env = env_of(containers(pod)[MAIN])
    assert main_env["DATARUN_DATABASE_INVENTORY_URL"] == "postgresql://postgres@127.0.0.1:5433/postgres"


@pytest.mark.parametrize(
    "entries",
    [
        {"c": "/coord"},
        {"p": "5432", "m": "a;b:c|d,e!f#g", "S": True},
        {"m": ";:|,!#%&@^~=+*"},
    ],
)
def test_serialized_maps_round_trip_through_the_sidecar_parser(entries: dict[str, str | bool]) -> None:
    assert parse_serialized_map(serialize_map(entries)) == entries


def test_the_wrapper_runs_the_exact_main_command(settings: Settings, tmp_path: Path) -> None:
    """wrap_application.sh accepts the builder's argv: with a sidecar that is ready and done, the app runs."""
    coord = tmp_path / "coord"
    settings = replace(settings, pod=PodSettings(coord_dir=str(coord), bin_dir=str(ROOT)))
    raw = spec(command=["sh", "-c"], args=['echo "ran $0" > "$1"', "app", str(tmp_path / "out.txt")])
    command = containers(get_pod(run(raw), PINNED, settings))[MAIN]["command"]
    (coord / "fuse").mkdir(parents=True)
    (coord / "fuse" / "ready").write_text("{}\n")
    (coord / "fuse" / "uploaddone").write_text("ok\n")
    proc = subprocess.run(["sh", *command], capture_output=True, text=True, timeout=60, check=False, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "ran app\n"
    assert (coord / "initupload").read_text().strip() == "0"


# -- reading the result ------------------------------------------------------------------------


@pytest.fixture
def pod(settings: Settings) -> dict[str, Any]:
    raw = spec(
        outputs=[
            {"name": "result", "repo": "out", "path": "out/result", "label": "latest"},
            {"name": "log", "repo": "logs", "path": "out/log", "uploadOnFailure": True},
        ]
    )
    return get_pod(run(raw), PINNED, settings)


def out(path: str, repo: str, **extra: Any) -> dict[str, Any]:
    return {"name": extra.pop("name", path), "repo": repo, "path": path, **extra}


def test_pending_says_why(pod: dict[str, Any]) -> None:
    unscheduled = {
        **pod,
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ],
        },
    }
    result = parse_pod_result(unscheduled)
    assert (result.phase, result.reason, result.message) == (Phase.PENDING, "Unschedulable", "0/3 nodes")
    pulling = with_status(
        pod, "Pending", {MAIN: {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    )
    result = parse_pod_result(pulling)
    assert (result.phase, result.reason) == (Phase.PENDING, "ImagePullBackOff")
    assert "container main: ImagePullBackOff: no such image" in result.message
    assert parse_pod_result({**pod, "status": {}}).phase is Phase.PENDING


def test_running_then_uploading(pod: dict[str, Any]) -> None:
    running = with_status(pod, "Running", {MAIN: {"running": {}}, FUSE: {"running": {}}})
    assert parse_pod_result(running).phase is Phase.RUNNING
    uploading = with_status(pod, "Running", {MAIN: terminated(0), FUSE: {"running": {}}})
    result = parse_pod_result(uploading)
    assert (result.phase, result.app_exit_code) == (Phase.UPLOADING, 0)
    waiting = with_status(pod, "Running", {MAIN: {"waiting": {"reason": "ContainerCreating"}}, FUSE: {"running": {}}})
    assert parse_pod_result(waiting).phase is Phase.PENDING


def test_success_reads_bundles_from_the_termination_message(pod: dict[str, Any]) -> None:
    message = fuse_result(
        [
            out("/data/out/result", "out", name="latest", label="latest", bundle=BUNDLE_OUT, uploaded=True),
            out("/data/out/log", "logs", bundle=BUNDLE_B, uploaded=True),
        ]
    )
    done = with_status(
        pod,
        "Succeeded",
        {
            MAIN: terminated(0, finished="2026-01-01T00:04:00Z"),
            FUSE: terminated(0, message, finished="2026-01-01T00:05:00Z"),
        },
    )
    result = parse_pod_result(done)
    assert (result.phase, result.reason, result.app_exit_code) == (Phase.SUCCEEDED, "Succeeded", 0)
    assert [(o.name, o.repo, o.bundle, o.label, o.error) for o in result.outputs] == [
        ("result", "out", BUNDLE_OUT, "latest", ""),  # named by the DataRun, not by the sidecar's label
        ("log", "logs", BUNDLE_B, "", ""),
    ]
    assert (result.start_time, result.completion_time) == ("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")
    assert result.message == "the app succeeded; 2 of 2 outputs uploaded"


def test_app_failure_names_the_code_and_keeps_upload_on_failure_outputs(pod: dict[str, Any]) -> None:
    message = fuse_result(
        [
            out(
                "/data/out/result",
                "out",
                skipped_reason="app did not succeed (app ended, code 3); uploadOnFailure is off",
            ),
            out("/data/out/log", "logs", bundle=BUNDLE_B, uploaded=True),
        ],
        app_code=3,
    )
    failed = with_status(pod, "Failed", {MAIN: terminated(3, "Traceback: boom"), FUSE: terminated(0, message)})
    result = parse_pod_result(failed)
    assert (result.phase, result.reason, result.app_exit_code) == (Phase.FAILED, "AppFailed", 3)
    assert result.message == "the app exited with code 3: Traceback: boom"
    by_name = {o.name: o for o in result.outputs}
    assert by_name["log"].bundle == BUNDLE_B
    assert by_name["result"].bundle == "" and "uploadOnFailure is off" in by_name["result"].error


def test_upload_failure_names_the_output(pod: dict[str, Any]) -> None:
    message = fuse_result(
        [
            out("/data/out/result", "out", error="store `az://acct/data` refused the write"),
            out("/data/out/log", "logs", bundle=BUNDLE_B, uploaded=True),
        ]
    )
    failed = with_status(pod, "Failed", {MAIN: terminated(75), FUSE: terminated(1, message)})
    result = parse_pod_result(failed)
    assert (result.phase, result.reason, result.app_exit_code) == (Phase.FAILED, "UploadFailed", 0)
    assert result.message == "output `result` (out): store `az://acct/data` refused the write"


def test_a_missing_message_on_success_fails_the_run(pod: dict[str, Any]) -> None:
    done = with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0)})
    result = parse_pod_result(done)
    assert (result.phase, result.reason) == (Phase.FAILED, "ResultUnreadable")
    assert "datarun-fuse: exited with code 0 (Completed) without a result" in result.message
    assert all(o.error == "no result from the sidecar" for o in result.outputs)


def test_a_truncated_message_is_reported_not_crashed_on(pod: dict[str, Any]) -> None:
    message = fuse_result([out("/data/out/result", "out", bundle=BUNDLE_OUT, uploaded=True)])[:40]
    result = parse_pod_result(with_status(pod, "Succeeded", {MAIN: terminated(0), FUSE: terminated(0, message)}))
    assert (result.phase, result.reason) == (Phase.FAILED, "ResultUnreadable")
    assert "not JSON" in result.message


def test_a_sidecar_that_never_got_ready(pod: dict[str, Any]) -> None:
    message = fuse_result([], app_code=None, errors=["mount: label `v1` not found in repo `in`"])
    failed = with_status(pod, "Failed", {MAIN: terminated(76), FUSE: terminated(1, message)})
    result = parse_pod_result(failed)
    assert (result.phase, result.reason, result.app_exit_code) == (Phase.FAILED, "SidecarNotReady", None)
    assert "datarun-fuse: mount: label `v1` not found in repo `in`" in result.message


def test_a_sidecar_that_died_after_ready(pod: dict[str, Any]) -> None:
    failed = with_status(pod, "Failed", {MAIN: terminated(77), FUSE: terminated(137, reason="OOMKilled")})
    result = parse_pod_result(failed)
    assert (result.phase, result.reason) == (Phase.FAILED, "SidecarUnresponsive")
    assert "datarun-fuse: exited with code 137 (OOMKilled)" in result.message


def test_an_app_out_of_memory(pod: dict[str, Any]) -> None:
    message = fuse_result([], app_code=137)
    failed = with_status(pod, "Failed", {MAIN: terminated(137, reason="OOMKilled"), FUSE: terminated(0, message)})
    result = parse_pod_result(failed)
    assert (result.reason, result.app_exit_code) == ("AppOOMKilled", 137)


def test_evicted_and_init_failures(pod: dict[str, Any]) -> None:
    evicted = with_status(pod, "Failed", {}, reason="Evicted", message="The node was low on resource: memory.")
    result = parse_pod_result(evicted)
    assert (result.phase, result.reason, result.message) == (
        Phase.FAILED,
        "PodEvicted",
        "The node was low on resource: memory.",
    )
    init_failed = with_status(
        pod,
        "Failed",
        {},
        initContainerStatuses=[{"name": INIT, "state": terminated(1, "cp: can't stat '/usr/local/bin/wrap'")}],
    )
    result = parse_pod_result(init_failed)
    assert result.reason == "InitFailed"
    assert "can't stat" in result.message


def test_database_outputs_are_named_by_the_database(settings: Settings) -> None:
    pod = get_pod(run(db_spec()), {**PINNED, "inventory": BUNDLE_DB}, settings)
    assert json.loads(pod["metadata"]["annotations"][ANNOTATION_OUTPUTS])[-1] == {
        "name": "inventory",
        "repo": "dbs",
        "path": "",
    }
    from datarun_sidecar.protocol import OutputResult, SidecarResult

    pg = SidecarResult("postgres", 0, [OutputResult("inventory", "dbs", "", "latest", BUNDLE_DB, True)])
    fuse = fuse_result([out("/data/out/result", "out", bundle=BUNDLE_OUT, uploaded=True)])
    done = with_status(
        pod,
        "Succeeded",
        {MAIN: terminated(0), FUSE: terminated(0, fuse), POSTGRES: terminated(0, json.dumps(pg.to_json()))},
    )
    result = parse_pod_result(done)
    assert result.phase is Phase.SUCCEEDED
    assert [(o.name, o.bundle) for o in result.outputs] == [("result", BUNDLE_OUT), ("inventory", BUNDLE_DB)]


def test_without_sidecars_every_exit_code_is_the_apps(settings: Settings) -> None:
    pod = get_pod(run(spec(inputs=[], outputs=[])), {}, settings)
    result = parse_pod_result(with_status(pod, "Failed", {MAIN: terminated(75, "oops")}))
    assert (result.reason, result.app_exit_code) == ("AppFailed", 75)
    assert parse_pod_result(with_status(pod, "Succeeded", {MAIN: terminated(0)})).phase is Phase.SUCCEEDED


def test_the_wrappers_exit_codes_are_the_ones_the_parser_reads() -> None:
    """The wrapper is shell and cannot import wire.py, so its header table is held to the constants."""
    header = (ROOT / "wrap_application.sh").read_text().split("\nset -u", 1)[0]
    documented = {int(m.group(1)): m.group(2) for m in re.finditer(r"^#\s+(7\d)\s+(.*)$", header, re.M)}
    assert documented.keys() == set(wire.WRAPPER_EXIT_CODES)
    assert "upload failed" in documented[wire.EXIT_UPLOAD_FAILED]
    assert "never became ready" in documented[wire.EXIT_NOT_READY]
    assert "stopped answering" in documented[wire.EXIT_NO_ANSWER]
    script = (ROOT / "wrap_application.sh").read_text()
    for code in wire.WRAPPER_EXIT_CODES:
        assert re.search(rf"(exit|result=) ?{code}\b", script), f"the wrapper never exits with {code}"


def test_both_sidecars_are_given_the_params_and_read_them_back_for_the_provenance(settings: Settings) -> None:
    """The DataRun's params reach the sidecars (the app gets them as DATARUN_PARAM_*), through the
    sidecars' own reader, so that every bundle they commit records them."""
    from datarun_sidecar.protocol import ENV_RUN_PARAMS, run_params

    params = {"lr": "0.1", "who": 'a "quoted" value; $(x)', "empty": ""}
    raw = {**db_spec(), "params": params}
    pod = get_pod(run(raw), {**PINNED, "inventory": BUNDLE_DB}, settings)
    c = containers(pod)
    assert ENV_RUN_PARAMS == wire.ENV_RUN_PARAMS
    for name in (FUSE, POSTGRES):
        env = {k: str(v) for k, v in env_of(c[name]).items()}
        assert run_params(env) == params, name
    assert ENV_RUN_PARAMS not in env_of(c[MAIN])
    no_params = containers(get_pod(run(), PINNED, settings))[FUSE]
    assert run_params({k: str(v) for k, v in env_of(no_params).items()}) == {}
