"""The kubelet's last word on a pod, for tests: how each container ended.

kwok starts pods and can end them all alike (tests/cluster/stages/pod-finish.yaml), but a real kubelet reports each
container's own exit code and copies what it wrote to its terminationMessagePath into the pod status. This writes
exactly those fields through the pods/status subresource, as the kubelet does, so the operator reads them the way it
would on a real node.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes

TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message


@dataclass(frozen=True)
class ContainerEnd:
    exit_code: int = 0
    message: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finish_pod(
    core_v1: kubernetes.client.CoreV1Api, namespace: str, name: str, ends: Mapping[str, ContainerEnd]
) -> None:
    """End every container of a Running pod: those named in ``ends`` as given, the others with exit code 0.
    The pod Succeeds when every container exited 0 (restartPolicy Never), and Fails otherwise."""
    pod: Any = core_v1.read_namespaced_pod(name, namespace)
    now = _now()
    statuses = []
    for container in pod.spec.containers:
        end = ends.get(container.name, ContainerEnd())
        terminated: dict[str, Any] = {
            "exitCode": end.exit_code,
            "reason": "Completed" if end.exit_code == 0 else "Error",
            "startedAt": now,
            "finishedAt": now,
        }
        if end.message:
            terminated["message"] = end.message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")
        statuses.append(
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"running": None, "terminated": terminated},
            }
        )
    failed = any(end.exit_code != 0 for end in ends.values())
    status = {
        "phase": "Failed" if failed else "Succeeded",
        "containerStatuses": statuses,
        "conditions": [
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        ],
    }
    core_v1.patch_namespaced_pod_status(name, namespace, {"status": status})
