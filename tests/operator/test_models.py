"""DataRun models: parsing, the field named in every error, and agreement with datarun's name rules."""

from __future__ import annotations

import re
from typing import Any

import pytest

from datarun.errors import UsageError
from datarun.model import validate_label_name, validate_repo_name
from datarun_operator.models import (
    LABEL_PATTERN,
    PATH_PATTERN,
    REPO_PATTERN,
    DataRun,
    DataRunStatus,
    InputMode,
    OutputStatus,
    Phase,
    SpecError,
    parse_spec,
    parse_status,
)
from datarun_operator.schema import dump
from tests.operator.builders import BUNDLE_A, body, spec


def test_a_valid_spec_parses_into_typed_records() -> None:
    parsed = parse_spec(
        spec(
            env=[{"name": "MODE", "value": "fast"}, {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s"}}}],
            params={"who": "world"},
            resources={"requests": {"cpu": "100m", "memory": 1024}},
            cache={"sizeLimit": "2Gi", "medium": "Memory"},
            databases=[{"name": "db", "port": 5432, "sourceRepo": "dbs", "sourceLabel": "latest"}],
        )
    )
    assert parsed.inputs[0].mode is InputMode.MOUNT
    assert parsed.inputs[0].label == "v1" and parsed.inputs[0].bundle is None
    assert parsed.outputs[0].upload_on_failure is False
    assert parsed.env[1].value_from == {"secretKeyRef": {"name": "s"}}
    assert parsed.resources is not None and parsed.resources.requests == {"cpu": "100m", "memory": "1024"}
    assert parsed.databases[0].source_label == "latest"
    assert parsed.params == {"who": "world"}


def test_records_are_frozen() -> None:
    parsed = parse_spec(spec())
    with pytest.raises(AttributeError):
        parsed.image = "other"  # type: ignore[misc]


# Every bad spec names the field it is about.
BAD_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing image", {"image": None}, "spec.image", "required"),
    ("empty image", {"image": ""}, "spec.image", "empty"),
    ("no command", {"command": []}, "spec.command", "empty"),
    ("command not a list", {"command": "echo hi"}, "spec.command", "must be a list"),
    ("unknown field", {"imagePullPolicy": "Always"}, "spec.imagePullPolicy", "unknown field"),
    (
        "label and bundle",
        {
            "inputs": [
                {"name": "a", "repo": "in", "label": "v1", "path": "a"},
                {"name": "b", "repo": "in", "label": "v1", "bundle": BUNDLE_A, "path": "b"},
            ]
        },
        "spec.inputs[1].label",
        "exactly one of `label` or `bundle`",
    ),
    (
        "neither label nor bundle",
        {"inputs": [{"name": "a", "repo": "in", "path": "a"}]},
        "spec.inputs[0].label",
        "exactly one",
    ),
    (
        "bad mode",
        {"inputs": [{"name": "a", "repo": "in", "label": "v1", "path": "a", "mode": "stream"}]},
        "spec.inputs[0].mode",
        "mount, download",
    ),
    (
        "bad repo name",
        {"inputs": [{"name": "a", "repo": "In_Repo", "label": "v1", "path": "a"}]},
        "spec.inputs[0].repo",
        "lowercase",
    ),
    ("repo with ..", {"outputs": [{"name": "o", "repo": "a..b", "path": "o"}]}, "spec.outputs[0].repo", "no `..`"),
    (
        "bad label",
        {"inputs": [{"name": "a", "repo": "in", "label": "-v1", "path": "a"}]},
        "spec.inputs[0].label",
        "letter or digit",
    ),
    (
        "bad bundle id",
        {"inputs": [{"name": "a", "repo": "in", "bundle": "abc", "path": "a"}]},
        "spec.inputs[0].bundle",
        "27 letters",
    ),
    (
        "absolute path",
        {"inputs": [{"name": "a", "repo": "in", "label": "v1", "path": "/etc"}]},
        "spec.inputs[0].path",
        "relative path",
    ),
    (
        "path with ..",
        {"outputs": [{"name": "o", "repo": "out", "path": "a/../b"}]},
        "spec.outputs[0].path",
        "relative path",
    ),
    (
        "path with a space",
        {"outputs": [{"name": "o", "repo": "out", "path": "my out"}]},
        "spec.outputs[0].path",
        "no spaces",
    ),
    (
        "bad input name",
        {"inputs": [{"name": "Numbers", "repo": "in", "label": "v1", "path": "a"}]},
        "spec.inputs[0].name",
        "lowercase",
    ),
    (
        "duplicate input names",
        {
            "inputs": [
                {"name": "a", "repo": "in", "label": "v1", "path": "a"},
                {"name": "a", "repo": "in", "label": "v1", "path": "b"},
            ]
        },
        "spec.inputs[1].name",
        "duplicate name `a`",
    ),
    (
        "input and output share a name",
        {"outputs": [{"name": "numbers", "repo": "out", "path": "o"}]},
        "spec.outputs[0].name",
        "also spec.inputs[0].name",
    ),
    (
        "output path equals input path",
        {"outputs": [{"name": "o", "repo": "out", "path": "in/numbers"}]},
        "spec.outputs[0].path",
        "is also spec.inputs[0].path",
    ),
    (
        "output inside input",
        {"outputs": [{"name": "o", "repo": "out", "path": "in/numbers/sub"}]},
        "spec.outputs[0].path",
        "nested",
    ),
    (
        "input inside output",
        {"outputs": [{"name": "o", "repo": "out", "path": "in"}]},
        "spec.outputs[0].path",
        "nested",
    ),
    (
        "two outputs nested",
        {"outputs": [{"name": "o", "repo": "out", "path": "out"}, {"name": "p", "repo": "out", "path": "out/p"}]},
        "spec.outputs[1].path",
        "nested",
    ),
    (
        "uploadOnFailure not a bool",
        {"outputs": [{"name": "o", "repo": "out", "path": "o", "uploadOnFailure": "yes"}]},
        "spec.outputs[0].uploadOnFailure",
        "boolean",
    ),
    ("reserved env name", {"env": [{"name": "DATARUN_STORE", "value": "x"}]}, "spec.env[0].name", "reserved"),
    (
        "env value and valueFrom",
        {"env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {}}}]},
        "spec.env[0].valueFrom",
        "at most one",
    ),
    (
        "duplicate env",
        {"env": [{"name": "A", "value": "x"}, {"name": "A", "value": "y"}]},
        "spec.env[1].name",
        "duplicate",
    ),
    ("bad param key", {"params": {"1x": "y"}}, "spec.params.1x", "not valid"),
    ("working dir not absolute", {"workingDir": "data"}, "spec.workingDir", "an absolute path"),
    ("bad quantity", {"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory", "quantity"),
    ("port out of range", {"databases": [{"name": "db", "port": 70000}]}, "spec.databases[0].port", "at most 65535"),
    ("port not an int", {"databases": [{"name": "db", "port": "5432"}]}, "spec.databases[0].port", "integer"),
    (
        "same port twice",
        {"databases": [{"name": "a", "port": 5432}, {"name": "b", "port": 5432}]},
        "spec.databases[1].port",
        "also used",
    ),
    (
        "source label and bundle",
        {"databases": [{"name": "db", "port": 5432, "sourceRepo": "d", "sourceLabel": "l", "sourceBundle": BUNDLE_A}]},
        "spec.databases[0].sourceBundle",
        "at most one",
    ),
    (
        "source without repo",
        {"databases": [{"name": "db", "port": 5432, "sourceLabel": "l"}]},
        "spec.databases[0].sourceRepo",
        "goes with",
    ),
    (
        "output label without repo",
        {"databases": [{"name": "db", "port": 5432, "outputLabel": "l"}]},
        "spec.databases[0].outputLabel",
        "needs `outputRepo`",
    ),
    ("cache medium", {"cache": {"medium": "SSD"}}, "spec.cache.medium", "Disk, Memory"),
    ("store without url", {"store": {}}, "spec.store.url", "required"),
    (
        "secret name",
        {"store": {"url": "gs://b", "credentialsSecret": "Bad_Name"}},
        "spec.store.credentialsSecret",
        "Secret name",
    ),
    ("spec not an object", {"inputs": "numbers"}, "spec.inputs", "must be a list"),
]


@pytest.mark.parametrize(("case", "overrides", "field", "words"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_specs_name_the_field(case: str, overrides: dict[str, Any], field: str, words: str) -> None:
    raw = spec(**overrides)
    for key, value in overrides.items():
        if value is None:
            del raw[key]
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert caught.value.field_path == field, case
    assert words in caught.value.message, caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


def test_a_missing_spec_names_spec_image() -> None:
    with pytest.raises(SpecError) as caught:
        DataRun.from_body({"metadata": {"name": "x"}})
    assert caught.value.field_path == "spec.image"


def test_a_long_name_is_refused_because_it_labels_the_pod() -> None:
    with pytest.raises(SpecError) as caught:
        DataRun.from_body(body(name="x" * 64))
    assert caught.value.field_path == "metadata.name"


def test_status_round_trips_and_ignores_unknown_keys() -> None:
    status = DataRunStatus(
        phase=Phase.SUCCEEDED,
        pinned_inputs={"numbers": BUNDLE_A},
        outputs=(OutputStatus(name="result", repo="out", bundle=BUNDLE_A, label="latest"),),
        app_exit_code=0,
    )
    raw = dump(status)
    assert raw["phase"] == "Succeeded"
    assert raw["pinnedInputs"] == {"numbers": BUNDLE_A}
    assert raw["outputs"] == [{"name": "result", "repo": "out", "bundle": BUNDLE_A, "label": "latest", "error": ""}]
    assert "podName" not in raw  # None is left out
    assert parse_status({**raw, "somethingNewer": 1}) == status


def test_status_with_a_bad_phase_names_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        parse_status({"phase": "Exploded"})
    assert caught.value.field_path == "status.phase"


NAMES = ["a", "in", "data.v2", "my-repo_1", "a.", "a..b", ".a", "-a", "A", "a/b", "a" * 63, "a" * 64, "", "a b", "é"]


@pytest.mark.parametrize("name", NAMES)
def test_the_repo_pattern_agrees_with_datarun(name: str) -> None:
    try:
        validate_repo_name(name)
        ours_should = True
    except UsageError:
        ours_should = False
    assert (bool(re.match(REPO_PATTERN, name)) and len(name) <= 63) == ours_should


@pytest.mark.parametrize("name", [*NAMES, "V1", "Release-2024.01", "a" * 128, "a" * 129])
def test_the_label_pattern_agrees_with_datarun(name: str) -> None:
    try:
        validate_label_name(name)
        ours_should = True
    except UsageError:
        ours_should = False
    assert (bool(re.match(LABEL_PATTERN, name)) and len(name) <= 128) == ours_should


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("in", True),
        ("in/numbers", True),
        (".hidden/x", True),
        ("a/...", True),
        ("a/..b", True),
        ("", False),
        ("/abs", False),
        ("a/", False),
        ("a//b", False),
        ("./a", False),
        ("a/.", False),
        ("a/../b", False),
        ("..", False),
        ("a b", False),
    ],
)
def test_the_path_pattern(path: str, ok: bool) -> None:
    assert bool(re.match(PATH_PATTERN, path)) == ok


def test_phases_only_move_forward() -> None:
    ranks = [p.rank for p in (Phase.PENDING, Phase.RUNNING, Phase.UPLOADING, Phase.SUCCEEDED)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    assert Phase.FAILED.terminal and Phase.SUCCEEDED.terminal and not Phase.UPLOADING.terminal
