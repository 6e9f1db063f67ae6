"""Shared builders for the operator tests: DataRun bodies, settings, pods as the kubelet reports them."""

from __future__ import annotations

import copy
import json
from typing import Any

from datarun_operator.models import DataRun
from datarun_operator.settings import ImageSettings, Settings, StoreSettings

BUNDLE_A = "2Kx0000000000000000000000aa"
BUNDLE_B = "2Kx0000000000000000000000bb"
BUNDLE_OUT = "2Kx0000000000000000000000cc"
BUNDLE_DB = "2Kx0000000000000000000000dd"
UID = "6a1f7d3e-0000-4000-8000-000000000001"


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid spec with one input, one output; overrides replace top-level keys."""
    base: dict[str, Any] = {
        "image": "busybox:1.36",
        "command": ["sh", "-c"],
        "args": ["cp -r $DATARUN_INPUT_NUMBERS/. $DATARUN_OUTPUT_RESULT/"],
        "inputs": [{"name": "numbers", "repo": "in", "label": "v1", "path": "in/numbers"}],
        "outputs": [{"name": "result", "repo": "out", "path": "out/result", "label": "latest"}],
    }
    base.update(copy.deepcopy(overrides))
    return base


def body(
    spec_: dict[str, Any] | None = None, status: dict[str, Any] | None = None, name: str = "job"
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "datarun.io/v1alpha1",
        "kind": "DataRun",
        "metadata": {"name": name, "namespace": "team", "uid": UID, "generation": 1},
        "spec": spec_ if spec_ is not None else spec(),
    }
    if status is not None:
        out["status"] = status
    return out


def run(spec_: dict[str, Any] | None = None, name: str = "job") -> DataRun:
    return DataRun.from_body(body(spec_, name=name))


def make_settings() -> Settings:
    return Settings(
        images=ImageSettings(sidecar="reg.example/datarun/sidecar:1.2.3", wrapper="reg.example/datarun/sidecar:1.2.3"),
        store=StoreSettings(url="az://acct/data", credentials_secret="datarun-store"),
    )


# -- pods as the kubelet reports them --------------------------------------------------------


def terminated(
    code: int, message: str = "", reason: str = "", finished: str = "2026-01-01T00:05:00Z"
) -> dict[str, Any]:
    term: dict[str, Any] = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "finishedAt": finished,
    }
    if message:
        term["message"] = message
    return {"terminated": term}


def with_status(pod: dict[str, Any], phase: str, containers: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``pod`` with a status: ``containers`` maps container name -> state."""
    out = copy.deepcopy(pod)
    out["status"] = {
        "phase": phase,
        "startTime": "2026-01-01T00:00:00Z",
        "containerStatuses": [{"name": name, "state": state} for name, state in containers.items()],
        **extra,
    }
    return out


def fuse_result(outputs: list[dict[str, Any]], app_code: int | None = 0, errors: list[str] | None = None) -> str:
    """The JSON the fuse sidecar writes, made by the sidecar's own code (datarun_sidecar.protocol)."""
    from datarun_sidecar.protocol import OutputResult, SidecarResult

    result = SidecarResult("fuse", app_code, [OutputResult(**o) for o in outputs], errors or [])
    return json.dumps(result.to_json())
