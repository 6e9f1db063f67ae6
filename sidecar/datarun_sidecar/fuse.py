"""The fuse sidecar: mount the inputs, wait for the app, upload the outputs, report.

Configured datamon-style with ``-d "<datarun command>"`` strings: at most one
``config create ...``, any number of ``bundle mount ...`` and ``bundle upload ...``. An upload
string may carry ``--upload-on-failure`` to upload even when the app failed (default: no).
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datarun.errors import DatarunError
from datarun.model import BundleRef, RunRecord
from datarun.repo import Client, UploadResult, connect
from datarun.runs import BundleLink, CacheStamp, Run
from datarun_sidecar.protocol import Coordination, PlannedOutput, SidecarError, SidecarResult, run_lifecycle
from datarun_sidecar.runcache import PodCache


class SidecarUsageError(SidecarError):
    """A ``-d`` command the sidecar cannot parse (exit 2 before anything starts)."""


@dataclass(frozen=True)
class MountSpec:
    repo: str
    mountpoint: str
    bundle: str = ""
    label: str = ""
    download: bool = False


@dataclass(frozen=True)
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
    """Mounts (or downloads) the inputs before the app, uploads the outputs after it."""

    kind = "fuse"
    ready_marker = "mountdone"

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
        self.run_cache = PodCache()

    def _cli(self, args: list[str]) -> list[str]:
        store = ["--store", self.store] if self.store else []
        return [sys.executable, "-m", "datarun.cli.main", *store, *args]

    def prepare(self) -> dict[str, Any]:
        if self.plan.config:
            from datarun.cli.main import main as cli_main

            os.environ.setdefault("DATARUN_CONFIG", str(self.coord.own / "config.yaml"))
            if cli_main(self.plan.config) != 0:
                raise SidecarError("config create failed")
        try:
            self.mount_inputs()
        except DatarunError as err:
            raise SidecarError(f"mount: {err}") from None
        return {"inputs": [i.to_json() for i in self.inputs]}

    def mount_inputs(self) -> None:
        client = connect(self.store)
        try:
            # Pin every label first: the app must see one bundle even if the label moves meanwhile,
            # and the run cache's key is made of the pinned bundles.
            pinned = [client.resolve(s.repo, s.bundle or None, s.label or None) for s in self.plan.mounts]
            self.inputs = [BundleRef(s.repo, b.id) for s, b in zip(self.plan.mounts, pinned, strict=True)]
            folders = [u.path for u in self.plan.uploads]
            if self.run_cache.before_mount(client, self.coord.own, pinned, folders, self.run_inputs()):
                return  # a cache hit: the outputs are in place and the app will not start
            for index, (spec, bundle) in enumerate(zip(self.plan.mounts, pinned, strict=True)):
                if spec.download:
                    client.download(bundle, spec.mountpoint, force=True)
                    continue
                self._mount(index, spec, bundle.id)
        finally:
            client.close()

    def _mount(self, index: int, spec: MountSpec, bundle_id: str) -> None:
        ready = self.coord.own / "mounts" / f"{index}.ready"
        ready.unlink(missing_ok=True)
        args = ["bundle", "mount", "--repo", spec.repo, "--bundle", bundle_id, "--mount", spec.mountpoint]
        log_path = self.coord.own / f"mount-{index}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(self._cli([*args, "--ready-file", str(ready)]), stdout=log, stderr=log)
        self._mounts.append(proc)
        deadline = time.monotonic() + self.mount_timeout
        while not ready.exists():
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip()
                raise DatarunError(f"mount of `{spec.repo}` at {spec.mountpoint} failed: {tail[-300:]}")
            if time.monotonic() > deadline:
                raise DatarunError(f"mount of `{spec.repo}` at {spec.mountpoint} not ready in time")
            time.sleep(0.02)

    def app_ended(self) -> None:
        self.unmount_all()

    def unmount_all(self) -> None:
        for proc in self._mounts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._mounts:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def outputs(self, app_code: int | None, why: str) -> list[PlannedOutput]:
        if self.run_cache.hit is not None:
            return []  # nothing to upload: the outputs are the earlier run's bundles
        planned = []
        for index, spec in enumerate(self.plan.uploads):
            skip = ""
            if app_code != 0 and not spec.upload_on_failure:
                skip = f"app did not succeed ({why}, code {app_code}); uploadOnFailure is off"
            planned.append(
                PlannedOutput(
                    # The run cache pairs a run's outputs with the key's by name: the plan's names.
                    name=self.run_cache.output_name(index, spec.label or spec.path),
                    repo=spec.repo,
                    path=spec.path,
                    label=spec.label,
                    skipped_reason=skip,
                    upload=functools.partial(self._upload, spec),
                )
            )
        return planned

    def _upload(self, spec: UploadSpec, client: Client, run: RunRecord) -> UploadResult:
        label = spec.label or None
        return client.upload(spec.repo, spec.path, spec.message, label=label, inputs=tuple(self.inputs), run=run)

    def run_inputs(self) -> list[BundleLink]:
        return [
            BundleLink(Path(spec.mountpoint).name or ref.repo, ref.repo, ref.bundle)
            for spec, ref in zip(self.plan.mounts, self.inputs, strict=False)
        ]

    def cache_stamp(self) -> CacheStamp | None:
        return self.run_cache.stamp()

    def recorded(self, client: Client, result: SidecarResult, run: Run | None) -> None:
        self.run_cache.after_record(client, result, run)

    def linger(self) -> None:
        pass

    def close(self) -> None:
        self.unmount_all()

    def run(self) -> int:
        return run_lifecycle(self)
