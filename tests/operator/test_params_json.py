"""spec.params as JSON: the builder mounts it as params.json in the working folder (downward API),
keeps DATARUN_PARAM_<key> for strings, and the model accepts any JSON value under a valid key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from datarun_operator.builder import ANNOTATION_PARAMS, MAIN, get_pod
from datarun_operator.models import DataRun, SpecError
from datarun_operator.settings import Settings
from tests.operator.builders import body, run, spec

PARAMS: dict[str, Any] = {
    "description": "sample",
    "model": {"lr": 0.01, "layers": [64, 32], "dropout": None},
    "epochs": 3,
    "shuffle": True,
}


def _main(pod: dict[str, Any]) -> dict[str, Any]:
    main: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == MAIN)
    return main


def _pod(settings: Settings, **overrides: Any) -> dict[str, Any]:
    raw = spec(params=PARAMS, **overrides)
    return get_pod(run(raw), {"numbers": "A" * 27}, settings)


def test_params_json_is_the_whole_object_through_an_annotation_and_the_downward_api(settings: Settings) -> None:
    pod = _pod(settings)
    assert json.loads(pod["metadata"]["annotations"][ANNOTATION_PARAMS]) == PARAMS
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "datarun-params")
    assert volume["downwardAPI"]["items"] == [
        {"path": "params.json", "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_PARAMS}']"}}
    ]
    main = _main(pod)
    assert main["workingDir"] == "/data", "the default working folder is where inputs and outputs are"
    mount = next(m for m in main["volumeMounts"] if m["name"] == "datarun-params")
    assert mount == {
        "name": "datarun-params",
        "mountPath": "/data/params.json",
        "subPath": "params.json",
        "readOnly": True,
    }
    sidecars = [c for c in pod["spec"]["containers"] if c["name"] != MAIN]
    assert all(m["name"] != "datarun-params" for c in sidecars for m in c.get("volumeMounts", []))


def test_a_working_dir_moves_params_json_with_it(settings: Settings) -> None:
    main = _main(_pod(settings, workingDir="/app"))
    assert main["workingDir"] == "/app"
    assert {"name": "datarun-params", "mountPath": "/app/params.json", "subPath": "params.json", "readOnly": True} in (
        main["volumeMounts"]
    )


def test_only_string_params_become_env_vars(settings: Settings) -> None:
    env = {e["name"]: e.get("value") for e in _main(_pod(settings))["env"]}
    assert env["DATARUN_PARAM_description"] == "sample"
    assert not {"DATARUN_PARAM_model", "DATARUN_PARAM_epochs", "DATARUN_PARAM_shuffle"} & set(env)


def test_params_annotation_is_canonical_so_the_pod_is_reproducible(settings: Settings) -> None:
    reordered = dict(reversed(list(PARAMS.items())))
    a = get_pod(run(spec(params=PARAMS)), {"numbers": "A" * 27}, settings)
    b = get_pod(run(spec(params=reordered)), {"numbers": "A" * 27}, settings)
    assert a["metadata"]["annotations"][ANNOTATION_PARAMS] == b["metadata"]["annotations"][ANNOTATION_PARAMS]


def test_no_params_is_an_empty_object(settings: Settings) -> None:
    pod = get_pod(run(spec()), {"numbers": "A" * 27}, settings)
    assert pod["metadata"]["annotations"][ANNOTATION_PARAMS] == "{}"


def test_the_model_takes_any_json_value_but_still_checks_keys() -> None:
    assert DataRun.from_body(body(spec(params=PARAMS))).spec.params == PARAMS
    with pytest.raises(SpecError, match=r"spec.params.1x: key '1x' is not valid"):
        DataRun.from_body(body(spec(params={"1x": {"nested": 1}})))
    with pytest.raises(SpecError, match=r"spec.workingDir: 'rel/dir' is not valid \(an absolute path"):
        DataRun.from_body(body(spec(workingDir="rel/dir")))
