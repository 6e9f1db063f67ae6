"""The examples are valid DataRuns: schema, models, webhook, and a pod the sidecars accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import datarun_sidecar.fuse as sidecar_fuse
from datarun_operator import reconcile
from datarun_operator.builder import FUSE, POSTGRES, get_pod
from datarun_operator.models import DataRun
from datarun_operator.settings import Settings
from datarun_sidecar.postgres_plan import plan_from_env
from tests.operator.schema_check import schema, validate

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["apiVersion"] == "datarun.io/v1alpha1" and doc["kind"] == "DataRun"
    out: dict[str, Any] = doc
    return out


def test_the_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"hello-world.yaml", "postgres.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_is_a_valid_datarun(path: Path, settings: Settings) -> None:
    doc = load(path)
    doc["metadata"].update(namespace="default", uid="uid-1")
    assert validate(schema(), doc) == []
    assert reconcile.admission_check("CREATE", doc, None) is not None
    run = DataRun.from_body(doc)
    pinned = {
        name: "2Kx" + "0" * 24 for name in [i.name for i in run.spec.inputs] + [d.name for d in run.spec.databases]
    }
    pod = get_pod(run, pinned, settings)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    if FUSE in containers:
        command = containers[FUSE]["command"]
        plan = sidecar_fuse.parse_commands([command[i + 1] for i, w in enumerate(command) if w == "-d"])
        assert len(plan.mounts) == len(run.spec.inputs) and len(plan.uploads) == len(run.spec.outputs)
    if POSTGRES in containers:
        env = {e["name"]: e["value"] for e in containers[POSTGRES]["env"] if e["name"].startswith("dm_pg_")}
        assert [db.id for db in plan_from_env(env).databases] == [d.name for d in run.spec.databases]


def test_hello_world_reads_a_label_and_writes_an_output() -> None:
    doc = load(next(p for p in EXAMPLES if p.name == "hello-world.yaml"))
    (inp,) = doc["spec"]["inputs"]
    (out,) = doc["spec"]["outputs"]
    assert "label" in inp and "bundle" not in inp
    assert out["repo"] and out["label"]
