"""Where a DataRun's wall time goes on the real node, to the tenth of a second.

The pod's own timestamps (``startedAt``, ``finishedAt``) are whole seconds, too coarse for a fixed cost of a
few seconds. So two finer clocks, both the host's (the containers share it):

- **API watches** of the run namespace's pods and DataRuns, each event stamped when the bench reads it: when
  the status got its pinned inputs, when the pod appeared, when each container was seen running or
  terminated, when the pod's phase and the DataRun's phase turned final;
- **the coordination folder's files** (the pod's ``datarun-coord`` emptyDir, on the host under the kubelet's
  root, polled while the pod runs), whose mtimes say when the wrapper started, the sidecar's config and mount
  were done, the app started and ended, the upload finished.

``run_marks`` joins them into ordered marks; ``phases`` turns marks into durations.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.node.node import STATE_DIR, NodeCluster

# (mark, where it comes from), in the order a run passes them.
MARKS = (
    ("applied", "the bench, before kubectl apply"),
    ("pinned", "DataRun watch: status.pinnedInputs set"),
    ("pod created", "pod watch: ADDED"),
    ("init ended", "pod watch: the init container terminated"),
    ("sidecar running", "pod watch: datarun-fuse running"),
    ("wrapper started", "coord: app/command"),
    ("sidecar started", "coord: fuse/ made (first poll that saw it)"),
    ("config created", "coord: fuse/config.yaml"),
    ("mount ready", "coord: fuse/mounts/0.ready"),
    ("mounted", "coord: mountdone"),
    ("app started", "coord: app/pid"),
    ("app ended", "coord: initupload"),
    ("uploaded", "coord: fuse/uploaddone"),
    ("main terminated", "pod watch: main terminated"),
    ("sidecar terminated", "pod watch: datarun-fuse terminated"),
    ("pod final", "pod watch: phase Succeeded/Failed"),
    ("status final", "DataRun watch: phase Succeeded/Failed"),
    ("wait returned", "the bench, after kubectl wait"),
)
FINAL = ("Succeeded", "Failed")
COORD_FILES = {
    "wrapper started": "app/command",
    "config created": "fuse/config.yaml",
    "mount ready": "fuse/mounts/0.ready",
    "mounted": "mountdone",
    "app started": "app/pid",
    "app ended": "initupload",
    "uploaded": "fuse/uploaddone",
}
PODS_DIR = STATE_DIR / "kubelet" / "pods"
COORD_VOLUME = "volumes/kubernetes.io~empty-dir/datarun-coord"


class Watch:
    """A streaming watch of one resource list; ``seen[name][mark]`` is the first time a mark was true."""

    def __init__(self, node: NodeCluster, path: str, marks: Callable[[str, dict[str, Any]], list[str]]) -> None:
        self.node = node
        self.path = path
        self.marks = marks
        self.seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        version = ""
        while True:  # the apiserver closes a watch after a while: resume from the last version
            query = f"?watch=1&timeoutSeconds=600{'&resourceVersion=' + version if version else ''}"
            request = urllib.request.Request(
                self.node.server + self.path + query, headers={"Authorization": f"Bearer {self.node.token}"}
            )
            try:
                with self.node._opener.open(request, timeout=700) as stream:
                    for line in stream:
                        stamp = time.time()
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            name = str(obj["metadata"]["name"])
                            with self._lock:
                                first = self.seen.setdefault(name, {})
                                for mark in self.marks(str(event["type"]), obj):
                                    first.setdefault(mark, stamp)
            except OSError:
                time.sleep(0.2)

    def marks_of(self, name: str) -> dict[str, float]:
        with self._lock:
            return dict(self.seen.get(name, {}))


def pod_marks(kind: str, pod: dict[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    marks = ["pod created"]
    for cs in status.get("initContainerStatuses") or []:
        if (cs.get("state") or {}).get("terminated"):
            marks.append("init ended")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        who = "main" if cs.get("name") == "main" else "sidecar"
        if state.get("running") and who == "sidecar":
            marks.append("sidecar running")
        if state.get("terminated"):
            marks.append(f"{who} terminated")
    if status.get("phase") in FINAL:
        marks.append("pod final")
    return marks


def datarun_marks(kind: str, run: dict[str, Any]) -> list[str]:
    status = run.get("status") or {}
    marks = []
    if status.get("pinnedInputs"):
        marks.append("pinned")
    if status.get("phase") in FINAL:
        marks.append("status final")
    return marks


@dataclass(frozen=True)
class Watches:
    pods: Watch
    runs: Watch
    coord: CoordWatch


def start_watches(node: NodeCluster, namespace: str) -> Watches:
    watches = Watches(
        Watch(node, f"/api/v1/namespaces/{namespace}/pods", pod_marks),
        Watch(node, f"/apis/datarun.io/v1alpha1/namespaces/{namespace}/dataruns", datarun_marks),
        CoordWatch(),
    )
    for watch in (watches.pods, watches.runs, watches.coord):
        watch.start()
    return watches


class CoordWatch:
    """Polls every pod's coordination folder on the node and keeps each file's mtime.

    The kubelet removes a finished pod's emptyDirs before it reports the pod's final phase, so the files must
    be read while the pod runs. The files are written once (temp + rename), so their mtime is when they were
    written, whenever the poll saw them.
    """

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="coordination files", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            for coord in PODS_DIR.glob(f"*/{COORD_VOLUME}"):
                uid = coord.parts[len(PODS_DIR.parts)]
                found = {}
                for mark, rel in COORD_FILES.items():
                    try:
                        found[mark] = (coord / rel).stat().st_mtime
                    except OSError:
                        continue
                if (coord / "fuse").is_dir():  # the sidecar makes its folder as it starts (to the poll's 50 ms)
                    found["sidecar started"] = time.time()
                with self._lock:
                    first = self.seen.setdefault(uid, {})
                    for mark, stamp in found.items():
                        first.setdefault(mark, stamp)
            time.sleep(self.every)

    def marks_of(self, uid: str) -> dict[str, float]:
        with self._lock:
            return dict(self.seen.get(uid, {}))


def run_marks(watches: Watches, run: str, pod: dict[str, Any], applied: float, returned: float) -> dict[str, float]:
    """Every mark of one run, applied = 0."""
    found = {"applied": applied, "wait returned": returned}
    found.update(watches.runs.marks_of(run))
    found.update(watches.pods.marks_of(str(pod["metadata"]["name"])))
    found.update(watches.coord.marks_of(str(pod["metadata"]["uid"])))
    return {mark: found[mark] - applied for mark, _ in MARKS if mark in found}


def phases(marks: dict[str, float]) -> dict[str, float]:
    """``a -> b`` durations between the marks that were seen, in the order they happened."""
    order = sorted(marks, key=lambda m: marks[m])
    return {f"{a} -> {b}": marks[b] - marks[a] for a, b in itertools.pairwise(order)}
