"""The Argo examples (examples/argo): valid WorkflowTemplates by Argo's own API models, and the datarun
parts in them are accepted by what runs them: the fuse sidecar's parser reads the hand-written `-d`
commands, and the webhook injects the annotated steps.

Argo's schema comes from the `argo-workflows` PyPI package (Argo's generated API client, a dev
dependency): its models check types and required fields; unknown fields, which they would keep
silently, are checked here against the models' attribute maps. Without the package these tests skip,
except under CI=true.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import yaml

import datarun_sidecar.fuse as sidecar_fuse
from datarun_operator import webhook
from datarun_operator.builder import FUSE, INIT, MAIN
from datarun_operator.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "argo"
FILES = sorted(EXAMPLES.glob("*.yaml"))
EMISSARY = ["/var/run/argo/argoexec", "emissary", "--loglevel", "info", "--log-format", "text", "--"]
# What Argo would substitute when the workflow runs (the webhook and the sidecar see the result).
ARGO_VARIABLES = {
    "inputs.parameters.label": "v1",
    "workflow.parameters.label": "v1",
    "workflow.name": "shout-x7k2q",
    "workflow.namespace": "argo",
    "pod.name": "shout-x7k2q-shout-1234",
}


@pytest.fixture(scope="module")
def argo() -> ModuleType:
    try:
        import argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_template as module
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: the argo-workflows package (a dev dependency) is missing")
        pytest.skip("the argo-workflows package is not installed (pip install -e '.[dev]')")
    return cast(ModuleType, module)


def load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "WorkflowTemplate")
    out: dict[str, Any] = doc
    return out


def substitute(value: Any) -> Any:
    """Argo's `{{...}}` variables replaced, as in the pod Argo creates."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            assert match.group(1) in ARGO_VARIABLES, f"unknown Argo variable {match.group(0)}"
            return ARGO_VARIABLES[match.group(1)]

        return re.sub(r"\{\{\s*([^}\s]+)\s*\}\}", one, value)
    if isinstance(value, list):
        return [substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v) for k, v in value.items()}
    return value


def unknown_fields(cls: Any, value: Any, where: str) -> list[str]:
    """Keys of ``value`` that Argo's model ``cls`` (or its nested models) does not have."""
    if isinstance(cls, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(cls[0], item, f"{where}[{i}]")]
    if isinstance(cls, dict):
        (types,) = cls.values()
        return [p for k, item in value.items() for p in unknown_fields(types[0], item, f"{where}.{k}")]
    if not hasattr(cls, "attribute_map") or not isinstance(value, dict):
        return []
    by_json = {json_name: name for name, json_name in cls.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{where}.{key}")
            continue
        problems += unknown_fields(cls.openapi_types[by_json[key]][0], item, f"{where}.{key}")
    return problems


def test_both_examples_exist() -> None:
    assert [p.name for p in FILES] == ["annotated-steps.yaml", "explicit-sidecars.yaml"]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_an_example_is_a_valid_workflow_template(argo: ModuleType, path: Path) -> None:
    from argo_workflows.configuration import Configuration
    from argo_workflows.model_utils import validate_and_convert_types

    doc = load(path)
    model = argo.IoArgoprojWorkflowV1alpha1WorkflowTemplate
    # Types and required fields, by the generated models (raises naming the path of the bad value).
    validate_and_convert_types(copy.deepcopy(doc), (model,), ["doc"], True, True, configuration=Configuration())
    assert unknown_fields(model, doc, "doc") == []

    spec = doc["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    assert spec["entrypoint"] in templates
    for template in templates.values():
        for group in template.get("steps", []):
            assert all(step["template"] in templates for step in group), group
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for template in templates.values():
        for container in [
            template.get("container") or {},
            *template.get("initContainers", []),
            *template.get("sidecars", []),
        ]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, container.get("name")


def test_unknown_fields_are_caught(argo: ModuleType) -> None:
    doc = load(EXAMPLES / "explicit-sidecars.yaml")
    doc["spec"]["templates"][0]["sidecars"][0]["volumeMount"] = []
    model = argo.IoArgoprojWorkflowV1alpha1WorkflowTemplate
    assert unknown_fields(model, doc, "doc") == ["doc.spec.templates[0].sidecars[0].volumeMount"]


def test_the_explicit_sidecar_commands_are_what_the_sidecar_and_wrapper_accept() -> None:
    (template,) = substitute(load(EXAMPLES / "explicit-sidecars.yaml"))["spec"]["templates"]
    (fuse,) = template["sidecars"]
    args = fuse["args"]
    plan = sidecar_fuse.parse_commands([args[i + 1] for i, word in enumerate(args) if word == "-d"])
    ((mount,), (upload,)) = plan.mounts, plan.uploads
    assert (mount.repo, mount.label, mount.mountpoint) == ("greetings", "v1", "/data/in/greetings")
    assert (upload.repo, upload.path, upload.label) == ("greetings-out", "/data/out/shouted", "latest")
    assert upload.message == "greetings, shouted by shout-x7k2q"
    app = template["container"]
    argv = [*app["command"], *app["args"]]
    assert argv[:6] == ["/datarun/bin/wrap_application.sh", "-c", "/coord", "-b", "fuse", "--"]
    assert args[args.index("-c") + 1] == "/coord"
    propagation = {m["name"]: m.get("mountPropagation") for m in fuse["volumeMounts"]}
    assert propagation["datarun-data"] == "Bidirectional" and fuse["securityContext"] == {"privileged": True}


def argo_pod(template: dict[str, Any]) -> dict[str, Any]:
    """The pod Argo's controller would create for a container template (emissary executor)."""
    meta = template.get("metadata") or {}
    container = template["container"]
    return {
        "metadata": {"name": "step", "namespace": "argo", **copy.deepcopy(meta)},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "quay.io/argoproj/argoexec:v3.6.5"}],
            "containers": [
                {"name": "wait", "image": "quay.io/argoproj/argoexec:v3.6.5"},
                {**copy.deepcopy(container), "name": MAIN, "command": [*EMISSARY, *container["command"]]},
            ],
        },
    }


def test_the_annotated_steps_are_injected_by_the_webhook(settings: Settings) -> None:
    templates = {t["name"]: t for t in substitute(load(EXAMPLES / "annotated-steps.yaml"))["spec"]["templates"]}
    for name in ("shout", "count"):
        labels = templates[name]["metadata"]["labels"]
        assert labels[webhook.LABEL_INJECT] == "true", "the label routes the pod to the webhook"
        pod = argo_pod(templates[name])
        webhook.apply_patch(pod, webhook.injection_patch(pod, settings))
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        assert list(containers) == ["wait", MAIN, FUSE], name
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["init", INIT]
        assert containers[MAIN]["command"][: len(EMISSARY) + 1] == [*EMISSARY, "/datarun/bin/wrap_application.sh"]
    shout = argo_pod(templates["shout"])
    webhook.apply_patch(shout, webhook.injection_patch(shout, settings))
    fuse = next(c for c in shout["spec"]["containers"] if c["name"] == FUSE)
    assert "bundle mount --repo=greetings --label=v1 --mount=/data/in/greetings --mode=mount" in fuse["command"]
    assert fuse["securityContext"] == {"privileged": True}
    count = argo_pod(templates["count"])
    webhook.apply_patch(count, webhook.injection_patch(count, settings))
    fuse = next(c for c in count["spec"]["containers"] if c["name"] == FUSE)
    assert "securityContext" not in fuse, "download inputs need no privileged sidecar"
