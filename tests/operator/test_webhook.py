"""The mutating webhook: an annotated pod gets what a DataRun pod gets, once; other pods are untouched;
a bad annotation is refused with the annotation and the field named. The sidecars' own parsers read
what it injects, as in test_resources.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import kopf
import pytest

import datarun_sidecar.fuse as sidecar_fuse
from datarun.cache import ENV_CACHE_PLAN, CachePlan, SecretRef
from datarun_operator import handlers, webhook
from datarun_operator.builder import FUSE, INIT, MAIN, POSTGRES, get_pod
from datarun_operator.settings import PodSettings, Settings, StoreSettings
from datarun_sidecar.postgres_plan import plan_from_env
from tests.operator.builders import BUNDLE_A, run, spec

INPUTS = "- {name: numbers, repo: in, label: v1, path: in/numbers}\n"
OUTPUTS = '[{"name": "result", "repo": "out", "path": "out/result", "label": "latest"}]'
EMISSARY = ["/var/run/argo/argoexec", "emissary", "--loglevel", "info", "--log-format", "text", "--"]


def argo_pod(annotations: Mapping[str, str] | None = None, **main: Any) -> dict[str, Any]:
    """A pod as Argo's workflow controller creates it for a step (emissary executor)."""
    notes = {"datarun.io/inject": "true", "datarun.io/inputs": INPUTS, "datarun.io/outputs": OUTPUTS}
    app: dict[str, Any] = {
        "name": "main",
        "image": "busybox:1.36",
        "command": [*EMISSARY, "sh", "-c"],
        "args": ["cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"],
        "env": [{"name": "ARGO_CONTAINER_NAME", "value": "main"}],
        "volumeMounts": [{"name": "var-run-argo", "mountPath": "/var/run/argo"}],
    }
    app.update(main)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "wf-step-123",
            "namespace": "argo",
            "labels": {"datarun.io/inject": "true", "workflows.argoproj.io/workflow": "wf"},
            "annotations": {**notes, **(annotations or {})} if annotations is not None else notes,
        },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "quay.io/argoproj/argoexec:v3.6.5"}],
            "containers": [{"name": "wait", "image": "quay.io/argoproj/argoexec:v3.6.5"}, app],
            "volumes": [{"name": "var-run-argo", "emptyDir": {}}],
        },
    }


def injected(pod: dict[str, Any], settings: Settings, lookup: webhook.ConfigMapLookup | None = None) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    webhook.apply_patch(out, webhook.injection_patch(pod, settings, lookup))
    return out


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def refusal(pod: dict[str, Any], settings: Settings, lookup: webhook.ConfigMapLookup | None = None) -> str:
    with pytest.raises(webhook.InjectionError) as caught:
        webhook.injection_patch(pod, settings, lookup)
    return str(caught.value)


# -- shape ----------------------------------------------------------------------------------------


def test_an_argo_step_gets_the_sidecar_init_container_volumes_and_wrapper(settings: Settings) -> None:
    pod = injected(argo_pod(), settings)

    containers = by_name(pod["spec"]["containers"])
    assert list(containers) == ["wait", MAIN, FUSE]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["init", INIT]
    assert [v["name"] for v in pod["spec"]["volumes"]] == [
        "var-run-argo",
        "datarun-coord",
        "datarun-bin",
        "datarun-data",
        "datarun-cache",
    ]
    main = containers[MAIN]
    # The wrapper goes after Argo's executor prefix: emissary still runs the step and sees its exit.
    wrapper = ["/datarun/bin/wrap_application.sh", "-c", "/coord", "-b", "fuse", "-r", "600", "-u", "0", "-h", "30"]
    assert main["command"] == [*EMISSARY, *wrapper, "--", "sh", "-c"]
    assert main["args"] == ["cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"], "args are left alone"
    assert [e["name"] for e in main["env"]] == ["ARGO_CONTAINER_NAME", "DATARUN_INPUT_NUMBERS", "DATARUN_OUTPUT_RESULT"]
    assert [m["mountPath"] for m in main["volumeMounts"]] == ["/var/run/argo", "/coord", "/datarun/bin", "/data"]
    assert pod["metadata"]["annotations"]["datarun.io/injected"] == f"{INIT},{FUSE}"
    assert pod["spec"]["restartPolicy"] == "Never" and "serviceAccountName" not in pod["spec"]


def test_the_injected_parts_are_those_of_a_datarun_pod(settings: Settings) -> None:
    """One code path: the same volumes, init container and fuse sidecar as get_pod's, but for the
    identity (a pod names itself through the downward API) and the pinning (left to the sidecar)."""
    pod = injected(
        argo_pod(annotations={"datarun.io/inputs": INPUTS.replace("label: v1", f"bundle: {BUNDLE_A}")}), settings
    )
    datarun = get_pod(
        run(spec(inputs=[{"name": "numbers", "repo": "in", "bundle": BUNDLE_A, "path": "in/numbers"}])),
        {"numbers": BUNDLE_A},
        settings,
    )

    # params.json is a DataRun's own (an injected pod has no spec.params): the rest is shared.
    assert pod["spec"]["volumes"][1:] == [v for v in datarun["spec"]["volumes"] if v["name"] != "datarun-params"]
    assert pod["spec"]["initContainers"][1:] == datarun["spec"]["initContainers"]
    ours, theirs = by_name(pod["spec"]["containers"])[FUSE], by_name(datarun["spec"]["containers"])[FUSE]
    for key in ("image", "volumeMounts", "securityContext", "envFrom", "terminationMessagePath"):
        assert ours[key] == theirs[key], key
    theirs_main = by_name(datarun["spec"]["containers"])[MAIN]
    assert pod["spec"]["containers"][1]["volumeMounts"][1:] == [
        m for m in theirs_main["volumeMounts"] if m["name"] != "datarun-params"
    ]
    assert ours["command"][: ours["command"].index("-d")] == theirs["command"][: theirs["command"].index("-d")]


def test_labels_are_left_for_the_sidecar_to_pin_and_the_sidecar_accepts_the_commands(settings: Settings) -> None:
    fuse = by_name(injected(argo_pod(), settings)["spec"]["containers"])[FUSE]
    commands = [fuse["command"][i + 1] for i, word in enumerate(fuse["command"]) if word == "-d"]
    plan = sidecar_fuse.parse_commands(commands)
    ((mount,), (upload,)) = plan.mounts, plan.uploads
    assert (mount.repo, mount.label, mount.bundle, mount.mountpoint) == ("in", "v1", "", "/data/in/numbers")
    assert (upload.repo, upload.path, upload.label) == ("out", "/data/out/result", "latest")
    # The kubelet expands $(VAR) from the container's env: the pod's name and uid exist only by then.
    assert upload.message == "output result of pod $(DATARUN_POD_NAMESPACE)/$(DATARUN_POD_NAME)"
    env = by_name(fuse["env"])
    assert env["DATARUN_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["DATARUN_RUN_ID"]["value"] == "$(DATARUN_POD_NAMESPACE)/$(DATARUN_POD_NAME)/$(DATARUN_POD_UID)"
    names = [e["name"] for e in fuse["env"]]
    assert names.index("DATARUN_POD_UID") < names.index("DATARUN_RUN_ID"), "a $(VAR) must be defined before use"
    assert env["DATARUN_IMAGE"]["value"] == "busybox:1.36"


def test_a_database_gets_the_postgres_sidecar_with_its_source_label(settings: Settings) -> None:
    databases = "- {name: inventory, port: 5433, sourceRepo: dbs, sourceLabel: latest, outputRepo: dbs}"
    pod = injected(argo_pod({"datarun.io/databases": databases}), settings)
    containers = by_name(pod["spec"]["containers"])
    assert list(containers) == ["wait", MAIN, FUSE, POSTGRES]
    env = {e["name"]: e["value"] for e in containers[POSTGRES]["env"] if e["name"].startswith("dm_pg_")}
    (db,) = plan_from_env(env).databases
    assert (db.id, db.port, db.source_repo, db.source_label, db.source_bundle) == (
        "inventory",
        5433,
        "dbs",
        "latest",
        "",
    )
    assert "-b" in containers[MAIN]["command"] and "postgres" in containers[MAIN]["command"]
    assert by_name(containers[MAIN]["env"])["DATARUN_DATABASE_INVENTORY_URL"]["value"].endswith(":5433/postgres")


def test_a_plain_pod_without_argo_is_wrapped_from_its_command(settings: Settings) -> None:
    pod = argo_pod(command=["python", "app.py"], args=["--fast"])
    pod["spec"] = {"containers": [pod["spec"]["containers"][1]], "restartPolicy": "Never"}
    pod["spec"]["containers"][0].update(name="app")
    del pod["spec"]["containers"][0]["env"], pod["spec"]["containers"][0]["volumeMounts"]

    out = injected(pod, settings)
    (app, _fuse) = out["spec"]["containers"]
    assert app["command"][0] == "/datarun/bin/wrap_application.sh" and app["command"][-3:] == ["--", "python", "app.py"]
    assert app["args"] == ["--fast"]
    assert [c["name"] for c in out["spec"]["initContainers"]] == [INIT]


def test_the_store_comes_from_the_settings_or_the_annotation(settings: Settings) -> None:
    fuse = by_name(
        injected(argo_pod({"datarun.io/store": "{url: 'gs://other', credentialsSecret: gcs}"}), settings)["spec"][
            "containers"
        ]
    )[FUSE]
    assert fuse["command"][fuse["command"].index("--store") + 1] == "gs://other"
    assert fuse["envFrom"] == [{"secretRef": {"name": "gcs"}}]
    default = by_name(injected(argo_pod(), settings)["spec"]["containers"])[FUSE]
    assert default["command"][default["command"].index("--store") + 1] == settings.store.url


def test_extra_run_pod_labels_are_added_without_overwriting(settings: Settings) -> None:
    extra = replace(
        settings, pod=PodSettings(labels={"azure.workload.identity/use": "true", "workflows.argoproj.io/workflow": "x"})
    )
    labels = injected(argo_pod(), extra)["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true" and labels["workflows.argoproj.io/workflow"] == "wf"


# -- idempotency and untouched pods ---------------------------------------------------------------


def test_reinvoking_on_an_injected_pod_injects_nothing(settings: Settings) -> None:
    once = injected(argo_pod(), settings)
    assert webhook.injection_patch(once, settings) == []
    assert injected(once, settings) == once


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"datarun.io/inject": "false"},
        {"datarun.io/inputs": INPUTS},
        {"datarun.io/inject": "False", "datarun.io/outputs": "{broken"},
    ],
    ids=["none", "false", "config-only", "false-and-broken"],
)
def test_a_pod_that_does_not_ask_is_untouched(settings: Settings, annotations: dict[str, str]) -> None:
    pod = argo_pod()
    pod["metadata"]["annotations"] = annotations
    assert webhook.injection_patch(pod, settings) == []
    del pod["metadata"]["annotations"]
    assert webhook.injection_patch(pod, settings) == []


def test_only_creation_is_mutated(settings: Settings) -> None:
    assert webhook.injection_patch(argo_pod(), settings, operation="UPDATE") == []
    assert webhook.injection_patch(argo_pod(), settings, operation="CREATE") != []


# -- bad annotations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"datarun.io/inject": "yes"}, 'datarun.io/inject: must be "true" or "false" (got \'yes\')'),
        (
            {"datarun.io/inputs": "- {name: numbers, repo: in, path: in/numbers}"},
            "datarun.io/inputs[0].label: give exactly one of `label` or `bundle`",
        ),
        (
            {"datarun.io/inputs": "- {name: Numbers, repo: in, label: v1, path: x}"},
            "datarun.io/inputs[0].name: 'Numbers' is not valid",
        ),
        ({"datarun.io/outputs": "{name: result}"}, "datarun.io/outputs: must be a list, not an object"),
        ({"datarun.io/outputs": "[{name: result"}, "datarun.io/outputs: not valid YAML or JSON"),
        (
            {"datarun.io/inputs": INPUTS.replace("}", ", moed: mount}")},
            "datarun.io/inputs[0].moed: unknown field; known fields are",
        ),
        (
            {"datarun.io/outputs": "- {name: result, repo: out, path: in/numbers}"},
            "datarun.io/outputs[0].path: `in/numbers` is also datarun.io/inputs[0].path",
        ),
        ({"datarun.io/databases": "- {name: db, port: 70000}"}, "datarun.io/databases[0].port: must be at most 65535"),
        ({"datarun.io/cache": "{medium: Tape}"}, "datarun.io/cache.medium: must be one of Disk, Memory"),
        ({"datarun.io/container": "app"}, "datarun.io/container: no container `app` (the pod has `wait`, `main`)"),
        (
            {"datarun.io/inputs": "[]", "datarun.io/outputs": ""},
            "datarun.io/inject is true but there is nothing to inject",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_a_bad_annotation_is_refused_naming_the_annotation_and_the_field(
    settings: Settings, annotations: dict[str, str], message: str
) -> None:
    assert refusal(argo_pod(annotations), settings).startswith(message)


@pytest.mark.parametrize("policy", ["Always", None])
def test_a_pod_that_restarts_when_it_ends_is_refused(settings: Settings, policy: str | None) -> None:
    pod = argo_pod()
    if policy is None:
        del pod["spec"]["restartPolicy"]  # Kubernetes' default is Always
    else:
        pod["spec"]["restartPolicy"] = policy
    assert refusal(pod, settings).startswith("spec.restartPolicy: `Always` restarts the app after it ends")


def test_a_pod_restarted_on_failure_is_injected(settings: Settings) -> None:
    pod = argo_pod()
    pod["spec"]["restartPolicy"] = "OnFailure"
    assert injected(pod, settings)["spec"]["restartPolicy"] == "OnFailure"


def test_an_app_container_without_a_command_is_refused(settings: Settings) -> None:
    pod = argo_pod(command=None)
    assert refusal(pod, settings).startswith("container `main` (datarun.io/container): has no `command`")


def test_two_containers_and_none_named_main_are_refused(settings: Settings) -> None:
    pod = argo_pod(name="app")
    assert refusal(pod, settings).startswith("datarun.io/container: the pod has `wait`, `app` and none is `main`")
    pod["metadata"]["annotations"]["datarun.io/container"] = "app"
    assert webhook.injection_patch(pod, settings)[0]["path"] == "/spec/containers/1/command"


def test_no_store_is_refused_naming_where_to_set_it(settings: Settings) -> None:
    bare = replace(settings, store=StoreSettings())
    assert refusal(argo_pod(), bare).startswith(
        "datarun.io/store.url: no store is configured: set datarun.io/store.url"
    )


def test_datarun_containers_without_the_injected_annotation_are_refused(settings: Settings) -> None:
    pod = argo_pod()
    pod["spec"]["containers"].append({"name": FUSE, "image": "mine"})
    assert "already has a container `datarun-fuse`" in refusal(pod, settings)


# -- the ConfigMap variant ---------------------------------------------------------------------------


def configmaps(data: dict[tuple[str, str], dict[str, str]]) -> webhook.ConfigMapLookup:
    return lambda namespace, name: data.get((namespace, name))


def test_a_configmap_holds_the_same_keys_and_an_annotation_overrides_one(settings: Settings) -> None:
    lookup = configmaps({("argo", "shared"): {"inputs": INPUTS, "outputs": OUTPUTS, "cache": "{sizeLimit: 1Gi}"}})
    pod = argo_pod({"datarun.io/config": "shared"})
    for key in ("inputs", "outputs"):
        del pod["metadata"]["annotations"][f"datarun.io/{key}"]
    out = injected(pod, settings, lookup)
    assert by_name(out["spec"]["volumes"])["datarun-cache"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert list(by_name(out["spec"]["containers"])) == ["wait", MAIN, FUSE]

    pod["metadata"]["annotations"]["datarun.io/outputs"] = "[]"
    out = injected(pod, settings, lookup)
    assert "DATARUN_OUTPUT_RESULT" not in by_name(by_name(out["spec"]["containers"])[MAIN]["env"])


def test_configmap_problems_name_the_configmap_and_the_key(settings: Settings) -> None:
    pod = argo_pod({"datarun.io/config": "shared"})
    del pod["metadata"]["annotations"]["datarun.io/inputs"]
    assert refusal(pod, settings, configmaps({})) == "datarun.io/config: no ConfigMap `shared` in namespace `argo`"
    bad = configmaps({("argo", "shared"): {"inputs": "- {name: numbers, repo: in, path: in/numbers}"}})
    assert refusal(pod, settings, bad).startswith("datarun.io/config `shared` key inputs[0].label: give exactly one")
    typo = configmaps({("argo", "shared"): {"inptus": INPUTS}})
    assert refusal(pod, settings, typo).startswith("datarun.io/config: ConfigMap `shared` has an unknown key `inptus`")


# -- JSONPatch and the kopf handler -------------------------------------------------------------------


def test_json_pointers_escape_slashes_and_tildes() -> None:
    assert (
        webhook.pointer("metadata", "annotations", "datarun.io/injected")
        == "/metadata/annotations/datarun.io~1injected"
    )
    doc: dict[str, Any] = {"a": {"x/y~": [1, 3]}}
    webhook.apply_patch(
        doc,
        [
            {"op": "add", "path": "/a/x~1y~0/1", "value": 2},
            {"op": "add", "path": "/a/x~1y~0/-", "value": 4},
            {"op": "replace", "path": "/a/x~1y~0/0", "value": 0},
            {"op": "add", "path": "/b", "value": {}},
            {"op": "remove", "path": "/b"},
        ],
    )
    assert doc == {"a": {"x/y~": [0, 2, 3, 4]}}


def test_the_kopf_handler_fills_in_kopfs_patch(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setattr(handlers, "SETTINGS", settings)
    raw = argo_pod()
    body = kopf.Body(cast(kopf.RawBody, copy.deepcopy(raw)))
    patch = kopf.Patch(body=body)
    handlers.inject(body=body, patch=patch, operation="CREATE")
    # What kopf answers the apiserver with: a JSONPatch against the pod it was sent.
    answer = json.loads(json.dumps(patch.as_json_patch()))
    after = copy.deepcopy(raw)
    webhook.apply_patch(after, answer)
    assert after == injected(raw, settings)

    untouched = kopf.Patch(body=body)
    handlers.inject(body=kopf.Body(cast(kopf.RawBody, after)), patch=untouched, operation="CREATE")
    assert untouched.as_json_patch() == []


def test_the_kopf_handler_refuses_with_422_and_the_message(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setattr(handlers, "SETTINGS", settings)
    body = kopf.Body(cast(kopf.RawBody, argo_pod({"datarun.io/outputs": "{name: result}"})))
    with pytest.raises(kopf.AdmissionError) as caught:
        handlers.inject(body=body, patch=kopf.Patch(body=body), operation="CREATE")
    assert caught.value.code == 422
    assert str(caught.value) == "datarun.io/outputs: must be a list, not an object"


# -- the run cache plan (datarun.cache.plan), which the fuse sidecar keys the step with ----------


def cache_plan_of(pod: dict[str, Any]) -> CachePlan | None:
    env = {e["name"]: e.get("value") for e in by_name(pod["spec"]["containers"])[FUSE].get("env", [])}
    raw = env.get(ENV_CACHE_PLAN)
    return None if raw is None else CachePlan.from_json(str(raw))


def test_a_step_gets_a_cache_plan_with_its_command_args_and_env_but_not_argos_own(settings: Settings) -> None:
    env = [
        {"name": "ARGO_CONTAINER_NAME", "value": "main"},
        {"name": "ARGO_NODE_ID", "value": "wf-123-456"},
        {"name": "ARGO_DEADLINE", "value": "2026-12-07T14:00:00Z"},
        {"name": "MODE", "value": "fast"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    notes = {"datarun.io/cache": "{policy: use, version: v2, trustTags: true}"}
    plan = cache_plan_of(injected(argo_pod(annotations=notes, env=env), settings))
    assert plan is not None
    assert plan.command == ("sh", "-c", "cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"), "no executor prefix"
    assert plan.env == {
        "MODE": "fast",
        "TOKEN": SecretRef("api", "token"),  # named, never read
        "NODE": 'valueFrom {"fieldRef":{"fieldPath":"spec.nodeName"}}',
    }
    assert (plan.policy, plan.salt, plan.trust_tags, plan.image) == ("use", "v2", True, "busybox:1.36")
    assert [(i.name, i.path) for i in plan.inputs] == [("numbers", "in/numbers")]
    assert [(o.name, o.repo, o.path, o.label) for o in plan.outputs] == [("result", "out", "out/result", "latest")]
    assert plan.versions == {"wrapper": settings.images.wrapper, "sidecar": settings.images.sidecar}
    app = by_name(injected(argo_pod(), settings)["spec"]["containers"])[MAIN]
    assert ENV_CACHE_PLAN not in {e["name"] for e in app["env"]}, "the plan is the sidecar's, not the app's"


def test_a_bare_off_which_yaml_reads_as_false_is_refused_saying_to_quote_it(settings: Settings) -> None:
    message = refusal(argo_pod(annotations={"datarun.io/cache": "{policy: off}"}), settings)
    assert "datarun.io/cache.policy" in message and "quote" in message


def test_two_runs_of_one_step_plan_the_same_key_and_a_parameter_changes_it(settings: Settings) -> None:
    """Argo substitutes a step's parameters into its args: those are keyed, the node id is not."""
    first = argo_pod(env=[{"name": "ARGO_NODE_ID", "value": "wf-1"}], args=["echo 0.1 > out/result/lr"])
    again = argo_pod(env=[{"name": "ARGO_NODE_ID", "value": "wf-2"}], args=["echo 0.1 > out/result/lr"])
    other = argo_pod(env=[{"name": "ARGO_NODE_ID", "value": "wf-3"}], args=["echo 0.2 > out/result/lr"])
    plans = [cache_plan_of(injected(pod, settings)) for pod in (first, again, other)]
    keys = [p.key(["m" * 64]).key for p in plans if p is not None]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]


@pytest.mark.parametrize(
    "annotations",
    [
        {"datarun.io/cache": '{policy: "off"}'},
        {"datarun.io/outputs": "[]", "datarun.io/inputs": INPUTS},
        {"datarun.io/databases": '[{"name": "db", "port": 5433, "sourceRepo": "dbs", "sourceLabel": "v1"}]'},
    ],
    ids=["policy-off", "no-outputs", "a-database"],
)
def test_no_plan_when_the_step_neither_looks_up_nor_records(settings: Settings, annotations: dict[str, str]) -> None:
    assert cache_plan_of(injected(argo_pod(annotations=annotations), settings)) is None
