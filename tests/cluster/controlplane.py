"""A throwaway Kubernetes control plane for tests: etcd, kube-apiserver and kwok, on loopback ports.

The binaries are built from Go modules by ``tests/cluster/build.sh`` (no release downloads, no Docker) into
``${DATARUN_K8S_CACHE:-~/.cache/datarun/k8s}/<k8s version>/bin``. ``ControlPlane`` makes throwaway
certificates with openssl, starts etcd and a real kube-apiserver (RBAC, token auth), writes a kubeconfig for a
``system:masters`` token, starts kwok with the stage files in ``tests/cluster/stages`` and creates one fake node,
``kwok-node-0``, that kwok makes Ready. kube-scheduler binds pods to it, as on a real cluster; kwok then moves them
Pending -> Running and finishes their deletion (see the stage files), and tests end them with the exit codes and
termination messages they choose (tests/cluster/kubelet.py). There is no kube-controller-manager: nothing
garbage-collects by ownerReference or finishes deleting a namespace.

    with ControlPlane() as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "get", "nodes"])

``python -m tests.cluster.controlplane`` runs one until interrupted and prints its kubeconfig path, so that
``pytest tests/cluster --kubeconfig <path>`` (or a developer) can use it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
STAGES_DIR = HERE / "stages"
VERSIONS_FILE = HERE / "versions.env"

NODE_NAME = "kwok-node-0"
#: kwok manages only the nodes with this annotation (``--manage-nodes-with-annotation-selector``).
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: The binaries a ControlPlane runs; build.sh also builds kubectl and helm.
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-scheduler", "kwok")

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The pinned versions from versions.env (``KEY=VALUE`` lines, ``#`` comments)."""
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


K8S_VERSION = read_versions()["K8S_VERSION"]


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries; ``DATARUN_K8S_BIN_DIR`` overrides it."""
    if explicit := os.environ.get("DATARUN_K8S_BIN_DIR"):
        return Path(explicit)
    cache = os.environ.get("DATARUN_K8S_CACHE") or str(Path.home() / ".cache" / "datarun" / "k8s")
    return Path(cache) / K8S_VERSION / "bin"


class BinariesMissingError(RuntimeError):
    """The control-plane binaries are not built (run tests/cluster/build.sh)."""


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready."""


def find_binaries(bin_dir: Path | None = None, names: Sequence[str] = REQUIRED_BINARIES) -> dict[str, Path]:
    """Paths of the named binaries in ``bin_dir``; raises BinariesMissingError naming the ones that are missing."""
    bin_dir = bin_dir or default_bin_dir()
    paths = {name: bin_dir / name for name in names}
    missing = [name for name, path in paths.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesMissingError(
            f"control-plane binaries missing from {bin_dir}: {', '.join(missing)}; "
            f"run {BUILD_SCRIPT.relative_to(HERE.parent.parent)} to build them from Go modules "
            "(cold: about 10 minutes on 2 CPUs; cached afterwards)"
        )
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL``: a child dies with the Python process even if that is SIGKILLed."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, check=False).stdout
    return [setpriv, "--pdeathsig", "KILL"] if "--pdeathsig" in usage else []


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def make_certificates(directory: Path) -> None:
    """ca.crt/ca.key, srv.crt/srv.key (SAN IP:127.0.0.1, DNS:localhost) signed by the CA, and sa.key."""
    if shutil.which("openssl") is None:
        raise ControlPlaneError("openssl is needed to make the control plane's certificates")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=datarun-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )  # fmt: skip
    (directory / "srv.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=kube-apiserver", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.crt", "-days", "2", "-extfile", "srv.ext", cwd=directory,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)


def _direct_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener that never uses a proxy (loopback only) and trusts ``context``'s CAs."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Call ``check`` until it returns True; ControlPlaneError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kwok with one fake Ready node; a context manager.

    After ``start()``: ``kubeconfig`` (token auth, CA), ``server``, ``token``, ``ca_file``, ``node_name``;
    ``timings`` holds how long each step took, in seconds.
    """

    bin_dir: Path | None = None
    node_name: str = NODE_NAME
    stages_dir: Path = STAGES_DIR
    start_timeout: float = 90.0
    stop_timeout: float = 10.0
    keep_workdir: bool = False
    apiserver_address: str = "127.0.0.1"

    workdir: Path = field(init=False)
    kubeconfig: Path = field(init=False)
    server: str = field(init=False)
    token: str = field(init=False)
    ca_file: Path = field(init=False)
    etcd_url: str = field(init=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)
    binaries: dict[str, Path] = field(init=False)
    _processes: list[_Process] = field(init=False, default_factory=list)
    _kwok: _Process | None = field(init=False, default=None)
    # No proxies for loopback, whatever HTTPS_PROXY says.
    _opener: urllib.request.OpenerDirector = field(init=False, default_factory=_direct_opener)

    def __post_init__(self) -> None:
        self.binaries = find_binaries(self.bin_dir)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        begin = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="datarun-k8s-"))
        try:
            self._step("certificates", self._prepare)
            self._step("etcd", self._start_etcd)
            self._step("kube-apiserver", self._start_apiserver)
            self._step("kube-scheduler", self._start_scheduler)
            self._step("kwok", self._start_kwok)
            self._step("node-ready", self._create_node)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - begin
        log.info("control plane up in %.1f s at %s (%s)", self.timings["total"], self.server, self.kubeconfig)

    def stop(self) -> None:
        """SIGTERM every component (newest first), SIGKILL what is still running after stop_timeout; rm workdir."""
        for proc in reversed(self._processes):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM for %.0f s; killing it", proc.name, self.stop_timeout)
                    proc.popen.kill()
                    proc.popen.wait()
            proc.log_file.close()
        self._processes.clear()
        workdir = getattr(self, "workdir", None)
        if workdir is not None and not self.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def _step(self, name: str, action: Callable[[], None]) -> None:
        begin = time.monotonic()
        action()
        self.timings[name] = time.monotonic() - begin

    # -- components -----------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        make_certificates(self.workdir)
        self.ca_file = self.workdir / "ca.crt"
        self.token = secrets.token_hex(24)
        # token,user,uid,"group1,group2"
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self._opener = _direct_opener(ssl.create_default_context(cafile=str(self.ca_file)))

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> _Process:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        command = [*_pdeathsig_prefix(), str(self.binaries[name]), *args]
        log.debug("starting %s", " ".join(command))
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then stops us in order
        )
        proc = _Process(name, popen, log_path, log_file)
        self._processes.append(proc)
        return proc

    def _wait_ready(self, proc: _Process, what: str, check: Callable[[], bool]) -> None:
        def alive_and_ready() -> bool:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode} before {what}; log {proc.log_path}:\n"
                    + proc.tail()
                )
            return check()

        try:
            wait_until(f"{proc.name}: {what}", alive_and_ready, self.start_timeout)
        except ControlPlaneError as err:
            if proc.popen.poll() is None:
                raise ControlPlaneError(f"{err}; log {proc.log_path}:\n{proc.tail()}") from None
            raise

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            "etcd",
            [
                "--name=datarun-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=datarun-test=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throwaway data: no fsync, much faster on slow disks
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                with self._opener.open(f"{self.etcd_url}/health", timeout=2) as response:
                    return bool(json.load(response).get("health") == "true")
            except (OSError, ValueError):
                return False

        self._wait_ready(proc, "/health", healthy)

    def _start_apiserver(self) -> None:
        port = free_port()
        address = self.apiserver_address
        self.server = f"https://{address}:{port}"
        w = self.workdir
        proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={port}",
                f"--cert-dir={w / 'apiserver-certs'}",
                f"--tls-cert-file={w / 'srv.crt'}",
                f"--tls-private-key-file={w / 'srv.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={w / 'sa.key'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--token-auth-file={w / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                *self._apiserver_flags(),
            ],
        )

        def ready() -> bool:
            try:
                return bool(self.request("GET", "/readyz", raw=True) == "ok")
            except (OSError, urllib.error.HTTPError):
                return False

        self._wait_ready(proc, "/readyz", ready)
        self.kubeconfig = w / "kubeconfig"
        self.kubeconfig.write_text(json.dumps(self.kubeconfig_dict(), indent=2))

    def _apiserver_flags(self) -> list[str]:
        """What this cluster's apiserver adds to the common flags (a real node needs other ones)."""
        # No kube-controller-manager makes the default ServiceAccount, so that admission would reject pods.
        return ["--disable-admission-plugins=ServiceAccount"]

    def _start_scheduler(self) -> None:
        port = free_port()
        config = self.workdir / "scheduler.yaml"
        # The default client rate (50 requests/s) would make binding a burst of runs the slowest step of a bench.
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 500, "burst": 1000},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        proc = self._spawn(
            "kube-scheduler",
            [f"--config={config}", "--bind-address=127.0.0.1", f"--secure-port={port}", "--profiling=false"],
        )
        # Its serving certificate is self-signed; /healthz is open to anyone (always-allow path).
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        opener = _direct_opener(insecure)

        def healthy() -> bool:
            try:
                with opener.open(f"https://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return bool(response.read() == b"ok")
            except (OSError, urllib.error.HTTPError):
                return False

        self._wait_ready(proc, "/healthz", healthy)

    def _start_kwok(self) -> None:
        stages = sorted(self.stages_dir.glob("*.yaml"))
        if not stages:
            raise ControlPlaneError(f"no kwok stage files in {self.stages_dir}")
        key, value = NODE_ANNOTATION
        proc = self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.244.255.254",
                *(f"--config={stage}" for stage in stages),
            ],
            # kwok also loads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok/kwok.yaml) if it exists: keep it private.
            env={"KWOK_WORKDIR": str(self.workdir / "kwok")},
        )
        # kwok has no readiness endpoint here; a start failure (bad stage file, bad flag) shows as an early exit,
        # and the node becoming Ready (next step) proves it is working.
        self._kwok = proc

    def _create_node(self) -> None:
        key, value = NODE_ANNOTATION
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
        }
        self.request("POST", "/api/v1/nodes", node)

        def node_ready() -> bool:
            status = cast(dict[str, Any], self.request("GET", f"/api/v1/nodes/{self.node_name}").get("status", {}))
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))

        assert self._kwok is not None
        self._wait_ready(self._kwok, f"node {self.node_name} Ready", node_ready)
        # The TaintNodesByCondition admission plugin gave the new node a not-ready NoSchedule taint; the node
        # lifecycle controller of kube-controller-manager would lift it once the node is Ready. None runs here.
        patch = urllib.request.Request(
            f"{self.server}/api/v1/nodes/{self.node_name}",
            data=json.dumps({"spec": {"taints": None}}).encode(),
            method="PATCH",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/merge-patch+json"},
        )
        with self._opener.open(patch, timeout=10):
            pass

    # -- access ---------------------------------------------------------------------------------------------------

    def kubeconfig_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "datarun-test", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "datarun-test", "context": {"cluster": "datarun-test", "user": "admin"}}],
            "current-context": "datarun-test",
        }

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One API request with the admin token; the decoded JSON (or the text if ``raw``)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with self._opener.open(request, timeout=10) as response:
            text = response.read().decode()
        return text if raw else json.loads(text)

    def logs(self, name: str, lines: int = 50) -> str:
        """The last lines of a component's log (etcd, kube-apiserver, kube-scheduler, kwok)."""
        for proc in self._processes:
            if proc.name == name:
                return proc.tail(lines)
        raise KeyError(name)


@dataclass
class KwokOnCluster:
    """kwok (with tests/cluster/stages) and its fake node on a cluster this module did not start (kind, or any
    ``--kubeconfig``), so that run pods bound to that node behave as on the throwaway control plane."""

    kubeconfig: Path
    bin_dir: Path | None = None
    node_name: str = NODE_NAME
    timeout: float = 60.0
    workdir: Path = field(init=False)
    _kwok: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __enter__(self) -> KwokOnCluster:
        binaries = find_binaries(self.bin_dir, ("kwok", "kubectl"))
        self.workdir = Path(tempfile.mkdtemp(prefix="datarun-kwok-"))
        key, value = NODE_ANNOTATION
        stages = [f"--config={stage}" for stage in sorted(STAGES_DIR.glob("*.yaml"))]
        log_file = (self.workdir / "kwok.log").open("wb")
        self._kwok = subprocess.Popen(
            [*_pdeathsig_prefix(), str(binaries["kwok"]), f"--kubeconfig={self.kubeconfig}", "--manage-all-nodes=false",
             f"--manage-nodes-with-annotation-selector={key}={value}", f"--cidr={POD_CIDR}", *stages],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ,
            "KWOK_WORKDIR": str(self.workdir)}, start_new_session=True,
        )  # fmt: skip
        kubectl = [str(binaries["kubectl"]), "--kubeconfig", str(self.kubeconfig)]
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {key: value},
                "labels": {"kubernetes.io/hostname": self.node_name, "type": "kwok"},
            },
        }
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(node).encode(), check=True, capture_output=True)

        ready_status = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"

        def ready() -> bool:
            out = subprocess.run(
                [*kubectl, "get", "node", self.node_name, "-o", ready_status],
                capture_output=True,
                text=True,
                check=False,
            )
            return out.stdout.strip() == "True"

        wait_until(f"kwok node {self.node_name} Ready", ready, self.timeout, interval=0.5)
        # No node lifecycle controller may run (kind has one, the throwaway plane none): lift the not-ready taint.
        subprocess.run([*kubectl, "patch", "node", self.node_name, "--type=merge", "-p", '{"spec":{"taints":null}}'],
                       check=True, capture_output=True)  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kwok is not None and self._kwok.poll() is None:
            self._kwok.terminate()
            self._kwok.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class Cluster:
    """What the cluster tests get: a kubeconfig with cluster-admin rights and the kwok node to bind pods to."""

    kubeconfig: Path
    node_name: str
    #: The throwaway control plane, or None when --kubeconfig named an existing cluster.
    control_plane: ControlPlane | None


def main() -> int:
    """Run a control plane until SIGINT/SIGTERM; print its kubeconfig path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ControlPlane() as cp:
        print(cp.kubeconfig, flush=True)
        print(f"# pytest tests/cluster --kubeconfig {cp.kubeconfig}", file=sys.stderr, flush=True)
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
