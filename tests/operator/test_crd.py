"""The CRD: generated from the models, committed current, and refusing bad specs structurally
(checked with tests/operator/schema_check.py, no apiserver needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from datarun_operator import crd
from datarun_operator.models import SpecError, parse_spec
from tests.operator.builders import BUNDLE_A, spec
from tests.operator.schema_check import schema, validate

ROOT = Path(__file__).resolve().parents[2]


def spec_errors(raw: dict[str, Any]) -> list[str]:
    return validate(schema()["properties"]["spec"], raw, "spec")


def test_the_committed_crd_is_what_the_models_generate() -> None:
    assert crd.CRD_PATH == ROOT / "charts" / "datarun" / "crds" / "datarun.io_dataruns.yaml"
    assert crd.CRD_PATH.read_text() == crd.render(), "run `python -m datarun_operator.crd` and commit the result"


def test_check_mode_exits_nonzero_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("Pending", "Waiting"))
    assert crd.main(["--check", "--output", str(stale)]) == 1
    assert crd.main(["--check", "--output", str(tmp_path / "missing.yaml")]) == 1
    assert crd.main(["--output", str(stale)]) == 0
    assert crd.main(["--check", "--output", str(stale)]) == 0


def test_check_mode_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "datarun_operator.crd", "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "current" in proc.stdout


def test_names_subresources_and_printer_columns() -> None:
    doc = yaml.safe_load(crd.CRD_PATH.read_text())
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == "dataruns.datarun.io"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("DataRun", "dataruns", ["dr"])
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Outputs"]["jsonPath"] == ".status.outputSummary"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _walk(s: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, s)]
    for name, sub in s.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in s:
        out += _walk(s["items"], f"{path}[]")
    if isinstance(s.get("additionalProperties"), dict):
        out += _walk(s["additionalProperties"], f"{path}.*")
    return out


def test_the_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string / preserve-unknown-fields), as apiextensions/v1 requires."""
    for path, node in _walk(schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
            assert node.get("x-kubernetes-preserve-unknown-fields") is True or path == ".metadata", path
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path


def test_enums_required_and_patterns_come_from_the_models() -> None:
    s = schema()["properties"]["spec"]
    inp = s["properties"]["inputs"]["items"]
    assert inp["properties"]["mode"]["enum"] == ["mount", "download"]
    assert set(inp["required"]) == {"name", "repo", "path"}
    assert s["required"] == ["image", "command"]
    assert s["properties"]["inputs"]["x-kubernetes-list-map-keys"] == ["name"]
    status = schema()["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == ["Pending", "Running", "Uploading", "Succeeded", "Failed"]
    assert status["properties"]["startTime"]["format"] == "date-time"


STRUCTURAL_REJECTS: list[tuple[dict[str, Any], str]] = [
    ({"inputs": [{"name": "a", "repo": "in", "label": "v1", "path": "a", "mode": "stream"}]}, "spec.inputs[0].mode"),
    ({"cache": {"medium": "SSD"}}, "spec.cache.medium"),
    ({"inputs": [{"name": "a", "repo": "In", "label": "v1", "path": "a"}]}, "spec.inputs[0].repo"),
    ({"outputs": [{"name": "o", "repo": "out", "path": "/abs"}]}, "spec.outputs[0].path"),
    ({"command": []}, "spec.command"),
    ({"databases": [{"name": "db", "port": 0}]}, "spec.databases[0].port"),
    ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory"),
    ({"inputs": [{"name": "a", "repo": "in", "path": "a"}]}, "spec.inputs[0].label"),
    ({"inputs": [{"name": "a", "repo": "in", "label": "v1", "bundle": BUNDLE_A, "path": "a"}]}, "spec.inputs[0].label"),
    ({"env": [{"name": "A", "value": "x", "valueFrom": {}}]}, "spec.env[0].valueFrom"),
    ({"databases": [{"name": "db", "port": 1, "sourceLabel": "l"}]}, "spec.databases[0].sourceRepo"),
    ({"databases": [{"name": "db", "port": 1, "outputLabel": "l"}]}, "spec.databases[0].outputLabel"),
    (
        {"databases": [{"name": "db", "port": 1, "sourceRepo": "d", "sourceLabel": "l", "sourceBundle": BUNDLE_A}]},
        "spec.databases[0].sourceBundle",
    ),
]


@pytest.mark.parametrize(("overrides", "field"), STRUCTURAL_REJECTS, ids=[f for _, f in STRUCTURAL_REJECTS])
def test_the_schema_and_the_models_refuse_the_same_field(overrides: dict[str, Any], field: str) -> None:
    raw = spec(**overrides)
    errors = spec_errors(raw)
    assert any(e.startswith(f"{field}:") for e in errors), errors
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert caught.value.field_path == field


def test_duplicate_names_are_refused_by_the_list_map_key() -> None:
    raw = spec(outputs=[{"name": "o", "repo": "out", "path": "a"}, {"name": "o", "repo": "out", "path": "b"}])
    assert any(e.startswith("spec.outputs[1]: Duplicate") for e in spec_errors(raw))


def test_a_valid_spec_passes_the_schema() -> None:
    raw = spec(
        env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        resources={"requests": {"cpu": 1, "memory": "64Mi"}},
        databases=[{"name": "db", "port": 5432, "sourceRepo": "d", "sourceLabel": "l", "outputRepo": "d"}],
        cache={"sizeLimit": "1Gi"},
    )
    assert spec_errors(raw) == []
    parse_spec(raw)


def test_what_only_the_webhook_catches() -> None:
    """Colliding paths pass the schema (CEL across lists would be too costly); the models refuse them."""
    raw = spec(outputs=[{"name": "o", "repo": "out", "path": "in/numbers"}])
    assert spec_errors(raw) == []
    with pytest.raises(SpecError, match=r"spec.outputs\[0\].path"):
        parse_spec(raw)
