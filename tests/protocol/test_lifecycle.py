"""The one sidecar lifecycle, driven through a small sidecar of the test's own and a real local store.

The sidecar here stands in for the fuse and postgres sidecars (which the other tests in this tier
run for real): it records the order of the lifecycle's calls and uploads plain folders, so that
what the lifecycle itself promises (markers, result, provenance, clean-up) is checked on its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from datarun.model import RunRecord
from datarun.repo import Client, UploadResult
from datarun.runs import BundleLink, CacheStamp, Run
from datarun.store import LocalStore
from datarun_sidecar.protocol import (
    ENV_RUN_PARAMS,
    Coordination,
    PlannedOutput,
    SidecarError,
    SidecarResult,
    run_lifecycle,
    run_params,
)


class FolderSidecar:
    kind = "test"
    ready_marker = "testdone"

    def __init__(self, tmp: Path, folders: dict[str, Path], *, fail_prepare: str = "", skip: str = "") -> None:
        self.coord = Coordination(tmp / "coord", "test")
        self.store: str | None = f"file://{tmp / 'store'}"
        self.termination_log: Path | None = tmp / "termination-log"
        self.app_heartbeat_timeout = 10.0
        self.folders = folders
        self.fail_prepare = fail_prepare
        self.skip = skip
        self.calls: list[str] = []

    def prepare(self) -> dict[str, Any]:
        self.calls.append("prepare")
        if self.fail_prepare:
            raise SidecarError(self.fail_prepare)
        return {"prepared": sorted(self.folders)}

    def app_ended(self) -> None:
        self.calls.append("app_ended")

    def outputs(self, app_code: int | None, why: str) -> Sequence[PlannedOutput]:
        self.calls.append(f"outputs {app_code} {why}")
        planned = []
        for name, folder in self.folders.items():

            def upload(client: Client, run: RunRecord, folder: Path = folder) -> UploadResult:
                return client.upload("out", folder, f"folder {folder.name}", run=run)

            skipped = self.skip if name == "skipped" else ""
            planned.append(
                PlannedOutput(name=name, repo="out", path=str(folder), skipped_reason=skipped, upload=upload)
            )
        return planned

    def run_inputs(self) -> Sequence[BundleLink]:
        return []

    def cache_stamp(self) -> CacheStamp | None:
        return None

    def recorded(self, client: Client, result: SidecarResult, run: Run | None) -> None:
        pass

    def linger(self) -> None:
        self.calls.append("linger")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATARUN_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("DATARUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATARUN_CACHE_DIR", str(tmp_path / "cache"))
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("out")
    client.close()
    return tmp_path


def _app_ended(tmp: Path, code: int, command: list[str]) -> None:
    """What the wrapper writes when the app ends: its command, then its exit code."""
    (tmp / "coord" / "app").mkdir(parents=True, exist_ok=True)
    (tmp / "coord" / "app" / "command").write_text("\n".join(command) + "\n")
    (tmp / "coord" / "initupload").write_text(f"{code}\n")


def _folder(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "f.txt").write_text(name)
    return folder


def _result(tmp: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp / "coord" / "test" / "result.json").read_text())
    return data


def test_the_lifecycle_runs_in_order_and_commits_the_run_with_its_params(tmp: Path) -> None:
    sidecar = FolderSidecar(tmp, {"a": _folder(tmp, "a")})
    _app_ended(tmp, 0, ["sh", "-c", "train --lr 0.1"])
    env = {"DATARUN_RUN_ID": "team/job/uid-1", "DATARUN_IMAGE": "busybox:1.36", ENV_RUN_PARAMS: '{"lr":"0.1"}'}
    assert run_lifecycle(sidecar, env) == 0
    assert sidecar.calls == ["prepare", "app_ended", "outputs 0 app ended", "linger", "close"]
    assert json.loads((tmp / "coord" / "test" / "ready").read_text()) == {"prepared": ["a"]}
    assert (tmp / "coord" / "testdone").exists(), "the legacy marker"
    assert (tmp / "coord" / "test" / "uploaddone").read_text() == "ok\n"
    result = _result(tmp)
    assert result["status"] == "ok" and result["appExitCode"] == 0
    assert json.loads((tmp / "termination-log").read_text())["outputs"][0]["bundle"] == result["outputs"][0]["bundle"]

    client = Client(LocalStore(tmp / "store"), cache_dir=tmp / "cache2")
    bundle = client.get_bundle("out", result["outputs"][0]["bundle"])
    assert bundle.provenance.run == RunRecord(
        run_id="team/job/uid-1",
        command=("sh", "-c", "train --lr 0.1"),
        image="busybox:1.36",
        exit_code=0,
        params={"lr": "0.1"},
    )


def test_a_failed_upload_is_named_and_the_other_outputs_still_go(tmp: Path) -> None:
    folders = {"missing": tmp / "never-made", "b": _folder(tmp, "b"), "skipped": _folder(tmp, "s")}
    sidecar = FolderSidecar(tmp, folders, skip="not wanted")
    _app_ended(tmp, 0, ["true"])
    assert run_lifecycle(sidecar, {}) == 1
    outputs = {o["name"]: o for o in _result(tmp)["outputs"]}
    assert "does not exist" in outputs["missing"]["error"] and not outputs["missing"]["uploaded"]
    assert outputs["b"]["uploaded"] and outputs["b"]["bundle"]
    assert (outputs["skipped"]["skipped_reason"], outputs["skipped"]["uploaded"]) == ("not wanted", False)
    client = Client(LocalStore(tmp / "store"), cache_dir=tmp / "cache2")
    assert [b.id for b in client.list_bundles("out")] == [outputs["b"]["bundle"]]
    (bundle,) = client.list_bundles("out")
    assert bundle.provenance.run is not None and bundle.provenance.run.params == {}
    assert (tmp / "coord" / "test" / "uploaddone").read_text() == "failed\n"


def test_a_failed_prepare_is_reported_the_app_never_waited_for_and_the_sidecar_cleaned_up(tmp: Path) -> None:
    sidecar = FolderSidecar(tmp, {"a": _folder(tmp, "a")}, fail_prepare="mount: label `v9` not found")
    assert run_lifecycle(sidecar, {}) == 1
    assert sidecar.calls == ["prepare", "close"]
    assert (tmp / "coord" / "test" / "failed").read_text() == "mount: label `v9` not found\n"
    assert not (tmp / "coord" / "test" / "ready").exists()
    result = _result(tmp)
    assert (result["status"], result["appExitCode"], result["errors"]) == (
        "failed",
        None,
        ["mount: label `v9` not found"],
    )


def test_unreadable_params_stop_the_sidecar_before_it_prepares(tmp: Path) -> None:
    sidecar = FolderSidecar(tmp, {"a": _folder(tmp, "a")})
    assert run_lifecycle(sidecar, {ENV_RUN_PARAMS: "lr=0.1"}) == 1
    assert sidecar.calls == ["close"]
    failed = (tmp / "coord" / "test" / "failed").read_text()
    assert ENV_RUN_PARAMS in failed and "not JSON" in failed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", {}), ("{}", {}), ('{"a":"1","b":""}', {"a": "1", "b": ""})],
)
def test_params_are_read_from_the_env(raw: str, expected: dict[str, str]) -> None:
    assert run_params({ENV_RUN_PARAMS: raw} if raw else {}) == expected


@pytest.mark.parametrize(
    ("raw", "why"), [("{", "not JSON"), ('["a"]', "not a JSON object"), ('"a"', "not a JSON object")]
)
def test_bad_params_are_refused_naming_the_variable(raw: str, why: str) -> None:
    with pytest.raises(SidecarError, match=why) as caught:
        run_params({ENV_RUN_PARAMS: raw})
    assert ENV_RUN_PARAMS in str(caught.value)
