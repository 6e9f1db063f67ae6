"""The fuse sidecar: mount the inputs, wait for the app, upload the outputs, report.

Configured datamon-style with ``-d "<datarun command>"`` strings: at most one
``config create ...``, any number of ``bundle mount ...`` and ``bundle upload ...``. An upload
string may carry ``--upload-on-failure`` to upload even when the app failed (default: no).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from datarun import summary
from datarun.errors import DatarunError
from datarun.model import BundleRef, RunRecord
from datarun.repo import Client, connect
from datarun_sidecar.protocol import Coordination, OutputResult, SidecarResult, transfer_fields


class SidecarUsageError(Exception):
    pass


@dataclass
class MountSpec:
    argv: list[str]  # arguments after `bundle mount`
    repo: str
    mountpoint: str
    bundle: str = ""
    label: str = ""
    download: bool = False


@dataclass
class UploadSpec:
    repo: str
    path: str
    message: str
    label: str = ""
    upload_on_failure: bool = False


@dataclass
class FusePlan:
    config: list[str] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    uploads: list[UploadSpec] = field(default_factory=list)


def _options(words: list[str], command: str) -> dict[str, str]:
    """`--key value` and `--flag` pairs; values of flags are "true"."""
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise SidecarUsageError(f"-d `{command}`: unexpected argument `{word}`")
        key, eq, value = word[2:].partition("=")
        if eq:
            out[key] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[key] = words[i + 1]
            i += 1
        else:
            out[key] = "true"
        i += 1
    return out


def parse_commands(commands: list[str]) -> FusePlan:
    plan = FusePlan()
    for command in commands:
        words = shlex.split(command)
        if words[:2] == ["config", "create"]:
            if plan.config:
                raise SidecarUsageError("at most one `config create` command is allowed")
            plan.config = words
        elif words[:2] == ["bundle", "mount"]:
            opts = _options(words[2:], command)
            for required in ("repo", "mount"):
                if required not in opts:
                    raise SidecarUsageError(f"-d `{command}`: missing --{required}")
            if ("bundle" in opts) == ("label" in opts):
                raise SidecarUsageError(f"-d `{command}`: give exactly one of --bundle or --label")
            plan.mounts.append(
                MountSpec(
                    words[2:],
                    opts["repo"],
                    opts["mount"],
                    opts.get("bundle", ""),
                    opts.get("label", ""),
                    opts.get("mode") == "download",
                )
            )
        elif words[:2] == ["bundle", "upload"]:
            opts = _options(words[2:], command)
            for required in ("repo", "path", "message"):
                if required not in opts:
                    raise SidecarUsageError(f"-d `{command}`: missing --{required}")
            plan.uploads.append(
                UploadSpec(
                    opts["repo"],
                    opts["path"],
                    opts["message"],
                    opts.get("label", ""),
                    opts.get("upload-on-failure") == "true",
                )
            )
        else:
            raise SidecarUsageError(
                f"-d `{command}`: only `config create`, `bundle mount` and `bundle upload` are allowed"
            )
    return plan


class FuseSidecar:
    def __init__(
        self,
        coord: Path,
        plan: FusePlan,
        *,
        termination_log: Path | None,
        store: str | None,
        mount_timeout: float = 300,
        app_heartbeat_timeout: float = 60,
    ) -> None:
        self.coord = Coordination(coord, "fuse")
        self.plan = plan
        self.termination_log = termination_log
        self.store = store
        self.mount_timeout = mount_timeout
        self.app_heartbeat_timeout = app_heartbeat_timeout
        self._mounts: list[subprocess.Popen[bytes]] = []
        self.inputs: list[BundleRef] = []

    def _cli(self, args: list[str]) -> list[str]:
        store = ["--store", self.store] if self.store else []
        return [sys.executable, "-m", "datarun.cli.main", *store, *args]

    def _client(self) -> Client:
        return connect(self.store)

    def mount_inputs(self) -> None:
        client = self._client()
        try:
            for index, spec in enumerate(self.plan.mounts):
                # Pin the label now: the app must see one bundle even if the label moves meanwhile.
                bundle = client.resolve(spec.repo, spec.bundle or None, spec.label or None)
                self.inputs.append(BundleRef(spec.repo, bundle.id))
                if spec.download:
                    client.download(bundle, spec.mountpoint, force=True)
                    continue
                ready = self.coord.own / "mounts" / f"{index}.ready"
                ready.unlink(missing_ok=True)
                args = [
                    "bundle",
                    "mount",
                    "--repo",
                    spec.repo,
                    "--bundle",
                    bundle.id,
                    "--mount",
                    spec.mountpoint,
                    "--ready-file",
                    str(ready),
                ]
                log = (self.coord.own / f"mount-{index}.log").open("wb")
                self._mounts.append(subprocess.Popen(self._cli(args), stdout=log, stderr=log))
                deadline = time.monotonic() + self.mount_timeout
                while not ready.exists():
                    proc = self._mounts[-1]
                    if proc.poll() is not None:
                        tail = (self.coord.own / f"mount-{index}.log").read_text(errors="replace").strip()
                        raise DatarunError(f"mount of `{spec.repo}` at {spec.mountpoint} failed: {tail[-300:]}")
                    if time.monotonic() > deadline:
                        raise DatarunError(f"mount of `{spec.repo}` at {spec.mountpoint} not ready in time")
                    time.sleep(0.02)
        finally:
            client.close()

    def unmount_all(self) -> None:
        for proc in self._mounts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._mounts:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def upload_outputs(self, app_code: int | None, why: str) -> SidecarResult:
        result = SidecarResult("fuse", app_code)
        command = _read_command(self.coord.root)
        run = RunRecord(
            run_id=os.environ.get("DATARUN_RUN_ID", ""),
            command=tuple(command),
            image=os.environ.get("DATARUN_IMAGE", ""),
            exit_code=app_code,
        )
        client = self._client()
        try:
            for spec in self.plan.uploads:
                out = OutputResult(name=spec.label or spec.path, repo=spec.repo, path=spec.path, label=spec.label)
                result.outputs.append(out)
                if app_code != 0 and not spec.upload_on_failure:
                    out.skipped_reason = f"app did not succeed ({why}, code {app_code}); uploadOnFailure is off"
                    continue
                try:
                    done = client.upload(
                        spec.repo, spec.path, spec.message, label=spec.label or None, inputs=tuple(self.inputs), run=run
                    )
                    out.bundle = done.bundle.id
                    out.uploaded = True
                    summary.emit("transfer", transfer_fields("fuse", out.name, done.bundle))
                except DatarunError as err:
                    out.error = str(err)
        finally:
            client.close()
        return result

    def run(self) -> int:
        self.coord.start_heartbeat()
        try:
            if self.plan.config:
                from datarun.cli.main import main as cli_main

                os.environ.setdefault("DATARUN_CONFIG", str(self.coord.own / "config.yaml"))
                if cli_main(self.plan.config) != 0:
                    self.coord.report_failed("config create failed")
                    return 1
            try:
                self.mount_inputs()
            except DatarunError as err:
                self.coord.report_failed(str(err))
                self.unmount_all()
                self.coord.report_result(SidecarResult("fuse", None, errors=[f"mount: {err}"]), self.termination_log)
                return 1
            self.coord.report_ready({"inputs": [i.to_json() for i in self.inputs]}, "mountdone")
            code, why = self.coord.wait_for_app_end(self.app_heartbeat_timeout)
            self.unmount_all()
            result = self.upload_outputs(code, why)
            self.coord.report_result(result, self.termination_log)
            return 0 if result.ok else 1
        finally:
            self.coord.stop_heartbeat()


def _read_command(coord: Path) -> list[str]:
    path = coord / "app" / "command"
    try:
        return [line for line in path.read_text().splitlines() if line]
    except OSError:
        return []
