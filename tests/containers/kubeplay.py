"""Run the operator's pods for real with ``podman kube play``, and read them back as Kubernetes would.

The pod is the one :func:`datarun_operator.builder.get_pod` builds, byte for byte, with three
additions that stand in for the parts of a cluster podman does not have:

- **termination-log files.** The kubelet bind-mounts a fresh, world-writable host file at each
  container's ``terminationMessagePath`` (default ``/dev/termination-log``) and copies at most
  4096 bytes of it into ``state.terminated.message``. Podman ignores the field, so
  :func:`kubelet_view` adds exactly such a ``hostPath`` file per container, and
  :func:`pod_status` reads it back, including ``FallbackToLogsOnError`` (the last 80 lines, at
  most 2048 bytes, of a failed container's log when its file is empty).
- **Secrets.** ``envFrom.secretRef`` is resolved by podman from a podman secret of that name,
  which podman 4.3 wants as a JSON object of base64 values: :func:`create_secret` makes it.
- **the network.** The emulators listen on the host's 127.0.0.1, and no cluster DNS or Service
  exists here, so pods are played with ``--network host`` (the built pod has no hostNetwork).

:func:`pod_status` is the adapter: it turns ``podman pod inspect`` and ``podman inspect`` into the
``status`` of a Kubernetes Pod (phase, startTime, containerStatuses with running / terminated /
waiting states), which is what :func:`datarun_operator.result.parse_pod_result` reads.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_LIMIT = 4096  # bytes the kubelet keeps of a termination message
FALLBACK_LINES = 80  # FallbackToLogsOnError: the kubelet's tail of the log ...
FALLBACK_BYTES = 2048  # ... capped at this many bytes


class PodmanError(RuntimeError):
    pass


def podman(*args: str, check: bool = True, timeout: float = 120.0, stdin: str | None = None) -> str:
    proc = subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise PodmanError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def podman_missing(images: list[str]) -> str | None:
    """Why the container tier cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman)"
    for image in images:
        if subprocess.run(["podman", "image", "exists", image], check=False).returncode != 0:
            return f"image {image} is missing: run images/build.sh"
    return None


def create_secret(name: str, data: Mapping[str, str]) -> None:
    """A podman secret that ``envFrom: [{secretRef: {name}}]`` resolves, like a Kubernetes Secret."""
    podman("secret", "rm", name, check=False)
    payload = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    podman("secret", "create", name, "-", stdin=json.dumps(payload))


def remove_secret(name: str) -> None:
    podman("secret", "rm", name, check=False)


# -- the pod as the kubelet would run it -------------------------------------------------------------


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = pod["spec"]
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            yield key, container


def kubelet_view(pod: Mapping[str, Any], workdir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """``pod`` plus the termination-log file mounts the kubelet adds; and those files by container."""
    out = copy.deepcopy(dict(pod))
    files: dict[str, Path] = {}
    volumes = out["spec"].setdefault("volumes", [])
    for _, container in _containers(out):
        name = container["name"]
        host_file = workdir / f"{name}.termination-log"
        host_file.write_bytes(b"")
        host_file.chmod(0o666)  # as the kubelet makes it: the container's user may not be root
        volume = f"kubelet-termlog-{name}"
        volumes.append({"name": volume, "hostPath": {"path": str(host_file), "type": "File"}})
        path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        container.setdefault("volumeMounts", []).append({"name": volume, "mountPath": path})
        files[name] = host_file
    _downward_files(out, workdir)
    return out, files


def _downward_files(pod: dict[str, Any], workdir: Path) -> None:
    """downwardAPI volumes (params.json) as the kubelet writes them: podman kube play has no such
    volume type, so each mounted item becomes a host file holding the annotation's value."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    volumes = pod["spec"].get("volumes") or []
    downward = {v["name"]: v["downwardAPI"] for v in volumes if "downwardAPI" in v}
    if not downward:
        return
    pod["spec"]["volumes"] = [v for v in volumes if v["name"] not in downward]
    for _, container in _containers(pod):
        mounts = []
        for mount in container.get("volumeMounts") or []:
            source = downward.get(mount["name"])
            if source is None:
                mounts.append(mount)
                continue
            item = next(i for i in source["items"] if i["path"] == mount.get("subPath"))
            key = item["fieldRef"]["fieldPath"].split("['", 1)[1].rstrip("']")
            host_file = workdir / f"downward-{container['name']}-{item['path']}"
            host_file.write_text(annotations.get(key, ""))
            host_file.chmod(0o444)
            volume = f"kubelet-downward-{container['name']}-{len(pod['spec']['volumes'])}"
            pod["spec"]["volumes"].append({"name": volume, "hostPath": {"path": str(host_file), "type": "File"}})
            mounts.append({"name": volume, "mountPath": mount["mountPath"], "readOnly": True})
        container["volumeMounts"] = mounts


# -- podman inspect -> Kubernetes pod status ---------------------------------------------------------


def _k8s_time(raw: str | None) -> str | None:
    """Go's RFC 3339 with nanoseconds (podman) -> Kubernetes' whole-second UTC timestamps."""
    if not raw or raw.startswith("0001-01-01"):
        return None
    text = raw.replace("Z", "+00:00")
    if "." in text:  # fromisoformat takes at most 6 fractional digits
        head, rest = text.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + rest[digits:]
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_logs(container_id: str, tail: int | None = None) -> str:
    """stdout and stderr together (``podman logs`` replays them on its own two streams)."""
    argv = ["podman", "logs", *(["--tail", str(tail)] if tail else []), container_id]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, check=False)
    return proc.stdout.decode(errors="replace")


def _log_tail(container_id: str) -> str:
    data = container_logs(container_id, FALLBACK_LINES).encode()[-FALLBACK_BYTES:]
    return data.decode(errors="replace")


def _state(info: Mapping[str, Any], container: Mapping[str, Any], termination_file: Path | None) -> dict[str, Any]:
    state = info.get("State") or {}
    status = str(state.get("Status") or "")
    if status in ("running", "paused", "stopping"):
        return {"running": {"startedAt": _k8s_time(state.get("StartedAt"))}}
    if status in ("exited", "stopped"):
        code = int(state.get("ExitCode") or 0)
        message = ""
        if termination_file is not None and termination_file.exists():
            message = termination_file.read_bytes()[:TERMINATION_LIMIT].decode(errors="replace")
        if not message.strip() and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = _log_tail(str(info["Id"]))
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        term: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": _k8s_time(state.get("StartedAt")),
            "finishedAt": _k8s_time(state.get("FinishedAt")),
            "containerID": f"podman://{info['Id']}",
        }
        if message:
            term["message"] = message
        return {"terminated": term}
    return {"waiting": {"reason": "ContainerCreating"}}


def _pod_inspect(name: str) -> dict[str, Any]:
    data = json.loads(podman("pod", "inspect", name))
    # podman 4.3 prints one object for one pod; later versions print a list.
    return dict(data[0] if isinstance(data, list) else data)


def pod_status(pod: Mapping[str, Any], termination_files: Mapping[str, Path]) -> dict[str, Any]:
    """``pod`` (the manifest) with ``status`` filled from podman, in the Kubernetes shape."""
    name = pod["metadata"]["name"]
    inspected = _pod_inspect(name)
    infra = inspected.get("InfraContainerID")
    ids = [c["Id"] for c in inspected.get("Containers") or [] if c["Id"] != infra]
    infos = json.loads(podman("container", "inspect", *ids)) if ids else []
    # kube play names each container <pod>-<container>.
    by_name = {str(i["Name"]).removeprefix(f"{name}-"): i for i in infos}
    statuses: dict[str, list[dict[str, Any]]] = {"initContainerStatuses": [], "containerStatuses": []}
    for key, container in _containers(pod):
        cname = container["name"]
        info = by_name.get(cname)
        status_key = "initContainerStatuses" if key == "initContainers" else "containerStatuses"
        if info is None:
            # Podman removes an init container once it has run: nothing to report, no state to invent.
            if key == "containers":
                statuses[status_key].append({"name": cname, "state": {"waiting": {"reason": "ContainerCreating"}}})
            continue
        state = _state(info, container, termination_files.get(cname))
        statuses[status_key].append(
            {"name": cname, "image": container.get("image"), "ready": "running" in state, "state": state}
        )
    main_states = [s["state"] for s in statuses["containerStatuses"]]
    if main_states and all("terminated" in s for s in main_states):
        failed = any(s["terminated"]["exitCode"] != 0 for s in main_states)
        phase = "Failed" if failed else "Succeeded"
    elif any("running" in s or "terminated" in s for s in main_states):
        phase = "Running"
    else:
        phase = "Pending"
    started = [
        t
        for s in main_states
        for t in [(s.get("running") or s.get("terminated") or {}).get("startedAt")]
        if isinstance(t, str)
    ]
    out = copy.deepcopy(dict(pod))
    out["status"] = {"phase": phase, **({"startTime": min(started)} if started else {}), **statuses}
    return out


# -- one run -----------------------------------------------------------------------------------------


@dataclass
class PlayedPod:
    """A finished pod: its Kubernetes-shaped status, logs, and the coordination folder's files."""

    pod: dict[str, Any]
    logs: dict[str, str] = field(default_factory=dict)
    coord: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def container(self, name: str) -> dict[str, Any]:
        for status in self.pod["status"]["containerStatuses"]:
            if status["name"] == name:
                return dict(status)
        raise KeyError(name)

    def describe(self) -> str:
        """For assertion messages: states and logs of every container."""
        states = json.dumps(self.pod["status"], indent=1)[:4000]
        logs = "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in self.logs.items())
        return f"{states}\n{logs}"


def _volume_sources(info: Mapping[str, Any]) -> dict[str, str]:
    return {str(m["Destination"]): str(m["Source"]) for m in info.get("Mounts") or [] if m.get("Source")}


def _read_tree(root: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = path.read_text(errors="replace")
    return files


def play(pod: Mapping[str, Any], workdir: Path, *, coord_dir: str = "/coord", timeout: float = 240.0) -> PlayedPod:
    """Run ``pod`` to its end with ``podman kube play`` and return what Kubernetes would report.

    The pod, its containers and its emptyDir volumes are removed afterwards.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    played, files = kubelet_view(pod, workdir)
    manifest = workdir / "pod.yaml"
    manifest.write_text(yaml.safe_dump(played, sort_keys=False))
    name = pod["metadata"]["name"]
    started = time.monotonic()
    podman("kube", "play", "--network", "host", str(manifest), timeout=timeout)
    try:
        # `podman wait` blocks until every container has exited, without polling (on two shared
        # cores a polling loop of `podman inspect` calls slows the very pod it watches).
        containers = [f"{name}-{c['name']}" for c in pod["spec"]["containers"]]
        try:
            podman("wait", *containers, timeout=timeout)
        except subprocess.TimeoutExpired:
            status = pod_status(pod, files)["status"]
            raise PodmanError(f"pod {name} did not finish in {timeout:.0f} s: {json.dumps(status)}") from None
        seconds = time.monotonic() - started
        current = pod_status(pod, files)
        result = PlayedPod(pod=current, seconds=seconds)
        inspected = _pod_inspect(name)
        infra = inspected.get("InfraContainerID")
        ids = [c["Id"] for c in inspected.get("Containers") or [] if c["Id"] != infra]
        for info in json.loads(podman("container", "inspect", *ids)) if ids else []:
            cname = str(info["Name"]).removeprefix(f"{name}-")
            result.logs[cname] = container_logs(str(info["Id"]))
            source = _volume_sources(info).get(coord_dir)
            if source and not result.coord:
                result.coord = _read_tree(Path(source))
        return result
    finally:
        remove_pod(name)


def remove_pod(name: str) -> None:
    """The pod, its containers and their anonymous (emptyDir) volumes."""
    with contextlib.suppress(PodmanError, json.JSONDecodeError):
        inspected = _pod_inspect(name)
        ids = [c["Id"] for c in inspected.get("Containers") or []]
        volumes = [
            str(m["Name"])
            for info in (json.loads(podman("container", "inspect", *ids)) if ids else [])
            for m in info.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name")
        ]
        podman("pod", "rm", "-f", name, check=False)
        if volumes:
            podman("volume", "rm", "-f", *volumes, check=False)
