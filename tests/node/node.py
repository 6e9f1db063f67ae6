"""A real Kubernetes node for tests: the control plane of tests/cluster plus kube-controller-manager, containerd
(with Debian's runc), a kubelet and kube-proxy, on one bridge network. Pods really run here.

Everything is built from Go modules by ``tests/node/build.sh`` into the control plane's bin folder. One node runs
per machine at a time: ``NodeCluster`` takes ``/var/tmp/datarun-node.lock`` (flock) for its whole life, because
the bridge, the nftables table, the cgroup root and the state folder below are fixed names, so that a run that
was SIGKILLed can be cleaned up by the next one. It cleans up after itself even when a test fails: pods first
(so the kubelet tears down their sandboxes and mounts), then every process it started, every mount under its
state folder, the bridge, kube-proxy's nftables table and its cgroups.

The settings these machines need (see tests/node/README.md for why):

- cgroups v1 (hybrid, no systemd as PID 1): kubelet ``cgroupDriver: cgroupfs`` and ``failCgroupV1: false``,
  containerd's runc with ``SystemdCgroup = false``; everything under the cgroup root ``/datarun-node``.
- no swap, but ``failSwapOn: false`` so that a machine with swap still runs.
- networking: the CNI bridge plugin on ``drnode0`` (10.250.0.0/24, no masquerade, no iptables rules), and
  kube-proxy in nftables mode (its own table, nothing else on the host touched) for the ``kubernetes`` Service;
  the apiserver listens on the bridge's address and routes to webhook endpoints directly
  (``--enable-aggregator-routing``), so no cluster DNS is needed.
- images: no registry; the pause image is a Go binary made into an OCI archive here, datarun's images are
  ``podman save``-d and ``ctr -n k8s.io images import``-ed, and pods use ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.cluster.controlplane import (
    BinariesMissingError,
    ControlPlane,
    ControlPlaneError,
    _direct_opener,
    _openssl,
    default_bin_dir,
    find_binaries,
    free_port,
    read_versions,
    wait_until,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
LOCK_FILE = Path("/var/tmp/datarun-node.lock")
STATE_DIR = Path(os.environ.get("DATARUN_NODE_STATE", "/var/tmp/datarun-node"))
BRIDGE = "drnode0"
POD_SUBNET = "10.250.0.0/24"
GATEWAY = "10.250.0.1"
SERVICE_CIDR = "10.0.0.0/24"
CGROUP_ROOT = "datarun-node"
NODE_NAME = "datarun-node-0"
PAUSE_IMAGE = "localhost/datarun-pause:1"
NODE_BINARIES = (
    "kubelet",
    "kube-controller-manager",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "pause",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
    "kubectl",
    "helm",
)
RUNC = os.environ.get("DATARUN_NODE_RUNC", "/usr/sbin/runc")
ARGO_VERSION = read_versions(HERE / "versions.env")["ARGO_VERSION"]
ARGO_BINARIES = ("workflow-controller", "argoexec")
ARGO_NAMESPACE = "argo"
EXECUTOR_IMAGE = f"localhost/datarun-argoexec:{ARGO_VERSION}"


def argo_source(bin_dir: Path | None = None) -> Path:
    """The copy of Argo's module that tests/node/build.sh builds argoexec from; it holds the CRDs and RBAC too."""
    cache = (bin_dir or default_bin_dir()).parents[1]
    source = cache / "src" / f"argo-workflows-{ARGO_VERSION}"
    if not (source / ".restored").is_file():
        raise BinariesMissingError(f"{source} is missing: run tests/node/build.sh workflow-controller argoexec")
    return source


class NodeError(ControlPlaneError):
    """The node could not be set up here; the message names the component and its log."""


def run(*args: str, check: bool = True, timeout: float = 120.0, stdin: bytes | None = None) -> str:
    proc = subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(args[:4])} ... exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def node_missing() -> str | None:
    """Why a node cannot run here, or None."""
    if os.geteuid() != 0:
        return "the node tier runs containerd and a kubelet, which need root"
    if not Path(RUNC).exists():
        return f"{RUNC} is missing: apt-get install runc"
    try:
        find_binaries(names=NODE_BINARIES)
    except Exception as err:  # BinariesMissingError names the control plane's script; ours builds the rest
        return f"{err}; and tests/node/build.sh for the node's binaries"
    return None


# -- the pause image, without a registry ---------------------------------------------------------------------------


def pause_archive(binary: Path, name: str = PAUSE_IMAGE) -> bytes:
    """An OCI image archive (what ``ctr images import`` reads) whose only file is ``/pause``."""
    return binary_archive(binary, name, "pause", {"Entrypoint": ["/pause"], "User": "65535:65535"})


def binary_archive(binary: Path, name: str, path: str, config: dict[str, Any]) -> bytes:
    """An OCI image archive of one static binary at ``path`` (plus a /tmp), with the image ``config`` given."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
        for parent in Path(path).parents[:-1][::-1]:
            folder = tarfile.TarInfo(str(parent))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
        info = tarfile.TarInfo(path)
        info.size = binary.stat().st_size
        info.mode = 0o755
        with binary.open("rb") as f:
            tar.addfile(info, f)
    layer = layer_buf.getvalue()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(image_config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(image_config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": len(layer)}],
        }
    ).encode()  # fmt: skip
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
                }
            ],
        }
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for digest, data in ((layer_digest, layer), (config_digest, image_config), (manifest_digest, manifest)):
            add(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return out.getvalue()


# -- cleanup of what a node leaves on the host ---------------------------------------------------------------------


def _mounts_under(root: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(f"{root}/"):
                found.append(point)
    return found


def unmount_all(root: Path) -> None:
    """Unmount everything at or below ``root``, deepest first (FUSE, overlays, netns, the kubelet's binds)."""
    for _ in range(5):
        points = sorted(set(_mounts_under(root)), key=lambda p: p.count("/"), reverse=True)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    leftover = _mounts_under(root)
    if leftover:
        log.warning("mounts left under %s: %s", root, leftover)


def remove_cgroups(name: str = CGROUP_ROOT) -> None:
    """rmdir the node's cgroup tree in every v1 hierarchy (and the unified one), leaves first."""
    base = Path("/sys/fs/cgroup")
    roots = [base / name] + [d / name for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: t[0].count("/"), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def host_cleanup(state: Path = STATE_DIR) -> None:
    """Everything a node (this one, or one that was killed) leaves: shims, mounts, bridge, nft table, cgroups."""
    # containerd's shims outlive containerd on purpose; ours are the ones serving sockets under our state folder.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                cmdline
                and cmdline[0].endswith(b"containerd-shim-runc-v2")
                and str(state).encode() in b" ".join(cmdline)
            ):
                os.kill(int(proc.name), signal.SIGKILL)
    # Containers still running in the node's cgroups (a shim killed above leaves its container behind).
    for tasks in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in tasks.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    unmount_all(state)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    for family in ("ip", "ip6"):
        subprocess.run(["nft", "delete", "table", family, "kube-proxy"], capture_output=True, check=False)
    for _ in range(20):  # the killed processes leave their cgroups a moment later
        remove_cgroups()
        if not any(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}")):
            break
        time.sleep(0.25)
    shutil.rmtree(state, ignore_errors=True)


# -- the node ------------------------------------------------------------------------------------------------------


@dataclass
class NodeCluster(ControlPlane):
    """etcd, kube-apiserver, kube-scheduler, kube-controller-manager, containerd, kubelet and kube-proxy.

    After ``start()``: everything ControlPlane offers (``kubeconfig``, ``server``, ``request``) plus
    ``kubectl(...)``, ``helm(...)``, ``import_podman_images(...)`` and ``gateway``, the host's address on the pod
    network (where the tests' emulators listen so that pods can reach them).
    """

    node_name: str = NODE_NAME
    start_timeout: float = 180.0
    gateway: str = GATEWAY
    apiserver_address: str = GATEWAY
    lock_timeout: float = 1800.0

    _lock: IO[bytes] | None = field(init=False, default=None)
    node_binaries: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.node_binaries = find_binaries(self.bin_dir, NODE_BINARIES)
        self.binaries.update(self.node_binaries)

    def start(self) -> None:
        begin = time.monotonic()
        self._step("lock", self._take_lock)
        try:
            host_cleanup()  # what a killed run left behind; the lock says no live node owns it
            STATE_DIR.mkdir(parents=True)
            self.workdir = STATE_DIR
            self._step("network", self._make_bridge)
            self._step("certificates", self._prepare)
            self._step("etcd", self._start_etcd)
            self._step("kube-apiserver", self._start_apiserver)
            self._step("kube-scheduler", self._start_scheduler)
            self._step("kube-controller-manager", self._start_controller_manager)
            self._step("containerd", self._start_containerd)
            self._step("pause-image", self._import_pause)
            self._step("kubelet", self._start_kubelet)
            self._step("kube-proxy", self._start_kube_proxy)
            self._step("node-ready", self._wait_node_ready)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - begin
        log.info("node up in %.1f s: %s", self.timings["total"], self.timings)

    def stop(self) -> None:
        if getattr(self, "kubeconfig", None) is not None and self._alive("kubelet"):
            with contextlib.suppress(Exception):
                self._drain()
        # SIGTERM newest first: kube-proxy, kubelet, containerd, ..., etcd.
        keep = self.keep_workdir
        self.keep_workdir = True
        super().stop()
        self.keep_workdir = keep
        if not keep:
            host_cleanup()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _alive(self, name: str) -> bool:
        return any(p.name == name and p.popen.poll() is None for p in self._processes)

    def _take_lock(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_FILE.open("ab")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise NodeError(f"another node holds {LOCK_FILE} for over {self.lock_timeout:.0f} s") from None
                time.sleep(1)
        self._lock = lock

    def _drain(self) -> None:
        """Delete every workload so that the kubelet stops the pods properly (sandboxes, volumes, FUSE mounts)."""
        self.kubectl("delete", "deployments,replicasets,jobs,daemonsets,statefulsets", "--all", "-A",
                     "--wait=false", check=False, timeout=30)  # fmt: skip
        self.kubectl("delete", "pods", "--all", "-A", "--grace-period=0", "--force", check=False, timeout=30)

        def sandboxes_gone() -> bool:
            out = self.ctr("tasks", "ls", "-q", check=False)
            return not out.strip()

        with contextlib.suppress(ControlPlaneError):
            wait_until("the kubelet to stop every pod", sandboxes_gone, 60, interval=0.5)

    # -- components ----------------------------------------------------------------------------------------------

    def _make_bridge(self) -> None:
        # Made here rather than by the CNI plugin on the first pod: the apiserver binds to its address first.
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")

    def _prepare(self) -> None:
        super()._prepare()
        # ControlPlane's server certificate names 127.0.0.1 only; pods reach the apiserver on the gateway.
        w = self.workdir
        (w / "srv.ext").write_text(
            f"subjectAltName=IP:{GATEWAY},IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
                 "-subj", "/CN=kube-apiserver", cwd=w)  # fmt: skip
        _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "srv.crt", "-days", "2", "-extfile", "srv.ext", cwd=w)  # fmt: skip

    def _apiserver_flags(self) -> list[str]:
        return [
            # Webhook Services resolve to their endpoints' pod IPs, reachable from the host over the bridge;
            # the ClusterIP would need kube-proxy rules in the host's OUTPUT path for the apiserver itself.
            "--enable-aggregator-routing=true",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _insecure_healthz(self, port: int) -> bool:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        try:
            with _direct_opener(insecure).open(f"https://127.0.0.1:{port}/healthz", timeout=2) as response:
                return bool(response.read() == b"ok")
        except (OSError, urllib.error.HTTPError):
            return False

    def _start_controller_manager(self) -> None:
        port = free_port()
        w = self.workdir
        proc = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                f"--root-ca-file={w / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ],
        )
        self._wait_ready(proc, "/healthz", lambda: self._insecure_healthz(port))

    def _start_containerd(self) -> None:
        w = self.workdir
        bin_dir = self.node_binaries["containerd"].parent
        (w / "cni" / "net.d").mkdir(parents=True)
        (w / "cni" / "net.d" / "10-datarun.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "datarun-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            # The default route via the bridge: Service IPs (10.0.0.x) are only DNATed there.
                            "isDefaultGateway": True,
                            # No masquerade: pods talk only to the host and each other, and the plugin
                            # then writes no iptables rules on a machine that others share.
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                                "dataDir": str(w / "cni" / "ipam"),
                            },
                        }
                    ],
                }
            )
        )
        self.containerd_socket = w / "containerd" / "containerd.sock"
        cri = '"io.containerd.cri.v1.runtime"'
        cni_bin, cni_conf = bin_dir / "cni", w / "cni" / "net.d"
        config = f"""version = 3
root = "{w}/containerd/root"
state = "{w}/containerd/state"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins.{cri}]
  enable_selinux = false
  # Network namespaces under our state folder: the cleanup unmounts them with everything else.
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE on these machines (a Firecracker VM's root lacks it): lowering oom_score_adj below our
  # own fails ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied" for every sandbox, which
  # the kubelet asks for -998); this clamps it to containerd's own value instead.
  restrict_oom_score_adj = true
  [plugins.{cri}.containerd]
    default_runtime_name = "runc"
    [plugins.{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{w}/runc"
        # cgroups v1 without systemd as PID 1: the cgroupfs driver, as the kubelet's.
        SystemdCgroup = false
  [plugins.{cri}.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"""
        (w / "containerd.toml").write_text(config)
        proc = self._spawn(
            "containerd",
            [f"--config={w / 'containerd.toml'}"],
            # The shim is found on PATH.
            env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        )

        def serving() -> bool:
            return self.containerd_socket.exists() and not self.ctr("version", check=False, timeout=5).startswith("!")

        self._wait_ready(proc, "its socket", serving)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120.0, stdin: bytes | None = None) -> str:
        binary = str(self.node_binaries["ctr"])
        command = [binary, "--address", str(self.containerd_socket), "-n", "k8s.io", *args]
        proc = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            if check:
                raise NodeError(f"ctr {' '.join(args[:3])} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
            return "!" + proc.stderr.decode()
        return proc.stdout.decode()

    def _import_pause(self) -> None:
        self.ctr("images", "import", "-", stdin=pause_archive(self.node_binaries["pause"]))

    def import_podman_images(self, *images: str) -> None:
        """``podman save`` | ``ctr -n k8s.io images import``: the node's only way to get datarun's images."""
        for image in images:
            archive = self.workdir / "image.tar"
            run("podman", "save", "--format", "oci-archive", "-o", str(archive), image, timeout=600)
            try:
                self.ctr("images", "import", "--base-name", image.rsplit(":", 1)[0], str(archive), timeout=600)
            finally:
                archive.unlink(missing_ok=True)

    def _make_cgroup_root(self) -> None:
        # The kubelet wants its cgroupRoot to exist in every v1 hierarchy; a new cpuset cgroup starts with no CPUs
        # and no memory nodes, and nothing can join it until it gets its parent's.
        base = Path("/sys/fs/cgroup")
        for hierarchy in sorted(d for d in base.iterdir() if d.is_dir() and not d.is_symlink()):
            if not (hierarchy / "cgroup.procs").exists():
                continue
            root = hierarchy / CGROUP_ROOT
            root.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (root / knob).exists():
                    (root / knob).write_text((hierarchy / knob).read_text())

    def _start_kubelet(self) -> None:
        w = self.workdir
        self._make_cgroup_root()
        port, healthz = free_port(), free_port()
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroups v1 here (hybrid hierarchy, no systemd as PID 1).
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            # On the node's address: the apiserver fetches logs (kubectl logs) from the node's InternalIP.
            "address": GATEWAY,
            "port": port,
            "podLogsDir": str(w / "pod-logs"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # Test machine: anyone who reaches the loopback port may read logs (the apiserver, for kubectl logs).
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(w / "srv.crt"),
            "tlsPrivateKeyFile": str(w / "srv.key"),
            # A shared CI disk is often fuller than the default 10%/15% thresholds: never evict tests' pods.
            "evictionHard": {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "50Mi"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "maxPods": 50,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            "localStorageCapacityIsolation": True,
        }
        (w / "kubelet.json").write_text(json.dumps(kubelet_config))
        proc = self._spawn(
            "kubelet",
            [
                f"--config={w / 'kubelet.json'}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={w / 'kubelet'}",
                f"--cert-dir={w / 'kubelet-pki'}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
        )
        self._kubelet_healthz = healthz

        def healthy() -> bool:
            try:
                with _direct_opener().open(f"http://127.0.0.1:{healthz}/healthz", timeout=2) as response:
                    return bool(response.read() == b"ok")
            except (OSError, urllib.error.HTTPError):
                return False

        self._wait_ready(proc, "/healthz", healthy)

    def _start_kube_proxy(self) -> None:
        w = self.workdir
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            # nftables: one table of its own, so the host's other rules (podman's, say) are untouched.
            "mode": "nftables",
            "clusterCIDR": POD_SUBNET,
            "hostnameOverride": self.node_name,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "conntrack": {"maxPerCore": 0},
        }
        (w / "kube-proxy.json").write_text(json.dumps(config))
        proc = self._spawn("kube-proxy", [f"--config={w / 'kube-proxy.json'}", "--v=1"])

        def table_made() -> bool:
            return "kube-proxy" in run("nft", "list", "tables", check=False)

        self._wait_ready(proc, "its nftables table", table_made)

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            try:
                status = self.request("GET", f"/api/v1/nodes/{self.node_name}").get("status", {})
            except urllib.error.HTTPError:
                return False
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))

        kubelet = next(p for p in self._processes if p.name == "kubelet")
        self._wait_ready(kubelet, f"node {self.node_name} Ready", ready)

    # -- Argo Workflows ------------------------------------------------------------------------------------------

    def start_argo(self) -> None:
        """Argo's CRDs and executor Role, argoexec's image, and workflow-controller as a process of this node.

        The controller runs on the host with the admin kubeconfig (like kube-controller-manager), not as a
        Deployment: that needs no image and no RBAC for it, and the executor, the part that runs in the
        step pods and that datarun's webhook sees, is Argo's own.
        """
        binaries = find_binaries(self.bin_dir, ARGO_BINARIES)
        self.binaries.update(binaries)
        source = argo_source(self.bin_dir)
        # `argoexec init` copies its own binary into the pod's /var/run/argo; the image needs nothing else.
        config = {"Entrypoint": ["argoexec"], "Env": ["PATH=/bin"]}
        self.ctr("images", "import", "-", stdin=binary_archive(binaries["argoexec"], EXECUTOR_IMAGE,
                                                               "bin/argoexec", config), timeout=300)  # fmt: skip
        self.kubectl("apply", "--server-side", "-k", str(source / "manifests/base/crds/minimal"))
        self.kubectl("create", "namespace", ARGO_NAMESPACE)
        # Metrics off: the controller's Prometheus port is a fixed 9090 on the host, shared with other runs.
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "workflow-controller-configmap", "namespace": ARGO_NAMESPACE},
            "data": {"metricsConfig": "enabled: false\n", "telemetryConfig": "enabled: false\n"},
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(configmap))
        for crd in ("workflows", "workflowtemplates", "workflowtaskresults"):
            self.kubectl("wait", "--for=condition=Established", f"crd/{crd}.argoproj.io", "--timeout=60s")
        proc = self._spawn(
            "workflow-controller",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={ARGO_NAMESPACE}",
                f"--executor-image={EXECUTOR_IMAGE}",
                "--executor-image-pull-policy=Never",
                "--workflow-workers=4",
                "--pod-cleanup-workers=2",
                "--cron-workflow-workers=1",
                "--workflow-archive-workers=1",
            ],
            env={"LEADER_ELECTION_DISABLE": "true"},
        )
        self._wait_ready(proc, "started", lambda: b"Starting Workflow Controller" in proc.log_path.read_bytes())

    def allow_executor(self, namespace: str) -> None:
        """Argo's recommended executor Role, bound to ``namespace``'s default ServiceAccount (the step pods')."""
        role = argo_source(self.bin_dir) / "manifests/quick-start/base/executor/emissary/executor-role.yaml"
        self.kubectl("apply", "-n", namespace, "-f", str(role))
        self.kubectl("create", "rolebinding", "executor-default", "-n", namespace, "--role=executor",
                     f"--serviceaccount={namespace}:default")  # fmt: skip

    # -- what tests use ------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120.0, stdin: str | None = None) -> str:
        return self._tool("kubectl", args, check=check, timeout=timeout, stdin=stdin)

    def helm(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        return self._tool("helm", args, check=check, timeout=timeout, stdin=None)

    def _tool(self, name: str, args: tuple[str, ...], *, check: bool, timeout: float, stdin: str | None) -> str:
        command = [str(self.binaries[name]), "--kubeconfig", str(self.kubeconfig), *args]
        env = {**os.environ, "HELM_CACHE_HOME": str(self.workdir / "helm"), "HELM_CONFIG_HOME": str(
            self.workdir / "helm"), "HELM_DATA_HOME": str(self.workdir / "helm")}  # fmt: skip
        proc = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise NodeError(f"{name} {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-3000:]}")
        return proc.stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))
