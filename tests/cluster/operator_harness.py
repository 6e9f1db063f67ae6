"""Run the real operator against a cluster, the way the chart deploys it, for the cluster tests and the bench.

``install_chart`` renders ``charts/datarun`` with the built ``helm`` and applies the CRD, the ServiceAccount and
the least-privilege RBAC into the apiserver (not the Deployment: there is no kubelet to run its image).
``service_account_kubeconfig`` asks the apiserver for a token of the chart's ServiceAccount (TokenRequest), so
the operator runs with exactly the chart's permissions: a missing RBAC rule fails these tests.
``OperatorProcess`` runs ``python -m datarun_operator`` as a child process, so a test can kill -9 it and start
another one, as a node failure or a rollout would.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import Cluster, ControlPlaneError, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "datarun"
RELEASE = "datarun"
NAMESPACE = "datarun-system"
SERVICE_ACCOUNT = "datarun"  # the chart's full name for release `datarun`
#: What the cluster tests apply from the rendered chart; the rest needs a kubelet or a Service network.
APPLIED_KINDS = ("CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")


def tool(cluster: Cluster, name: str) -> Path:
    """A binary built by tests/cluster/build.sh (kubectl, helm), or the one on PATH for --kubeconfig runs."""
    if cluster.control_plane is not None:
        built = cluster.control_plane.binaries["kube-apiserver"].parent / name
        if built.exists():
            return built
    found = shutil.which(name)
    if found is None:
        raise ControlPlaneError(f"`{name}` is needed (tests/cluster/build.sh builds it)")
    return Path(found)


def render_chart(helm: Path, *values: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``--set`` values, as parsed documents."""
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ControlPlaneError(f"helm template failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True) -> str:
    out = subprocess.run(
        [str(tool(cluster, "kubectl")), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and out.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout + out.stderr


def install_chart(cluster: Cluster) -> list[dict[str, Any]]:
    """Apply the chart's CRD, ServiceAccount and RBAC (idempotent); returns the applied documents."""
    docs = [d for d in render_chart(tool(cluster, "helm")) if d.get("kind") in APPLIED_KINDS]
    kubectl(cluster, "create", "namespace", NAMESPACE, check=False)
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(docs))
    kubectl(cluster, "wait", "--for=condition=Established", "--timeout=30s", "crd/dataruns.datarun.io")
    return docs


def service_account_kubeconfig(cluster: Cluster, path: Path, account: str = SERVICE_ACCOUNT) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a one-hour bound token)."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    answer = kubectl(
        cluster,
        "create",
        "--raw",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{account}/token",
        "-f",
        "-",
        stdin=json.dumps(request),
    )
    token = json.loads(answer)["status"]["token"]
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": account, "user": {"token": token}}]
    admin["contexts"] = [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}]
    admin["current-context"] = account
    path.write_text(json.dumps(admin))
    return path


def ensure_namespace(kube_api: kubernetes.client.ApiClient, name: str) -> None:
    """Create the namespace unless it exists: several modules' operators share one control plane."""
    try:
        kubernetes.client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    except ApiException as err:
        if err.status != 409:
            raise


@dataclass
class OperatorProcess:
    """``python -m datarun_operator`` in a child process; ``start()``, ``kill()`` (SIGKILL), ``stop()``."""

    kubeconfig: Path
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    namespaces: tuple[str, ...] = ()
    ready_timeout: float = 60.0

    popen: subprocess.Popen[bytes] | None = field(init=False, default=None)
    liveness: str = field(init=False, default="")
    starts: int = field(init=False, default=0)
    _log: IO[bytes] | None = field(init=False, default=None)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self._log = self.log_path.open("wb")
        args = [sys.executable, "-m", "datarun_operator", f"--liveness={self.liveness}"]
        args += [f"--namespace={ns}" for ns in self.namespaces]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake the test machine for a pod
        self.popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        wait_until("the operator's liveness endpoint", self._alive, self.ready_timeout, interval=0.2)

    def _alive(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise ControlPlaneError(f"the operator exited with {self.popen.returncode}:\n{self.tail()}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.liveness, timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer work, as when its node dies."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def rss_bytes(self) -> int:
        """Resident memory of the operator process now."""
        assert self.popen is not None
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def tail(self, lines: int = 40) -> str:
        logs = sorted(self.log_dir.glob("operator-*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in logs[-1:])
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_tls(directory: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """ca.crt, tls.crt, tls.key for a webhook served on 127.0.0.1 (openssl; kopf's self-signing fails here)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, capture_output=True, check=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=datarun-webhook-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    (directory / "tls.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={common_name}"
    )
    openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
        "-days", "2", "-extfile", "tls.ext",
    )  # fmt: skip
    return directory / "ca.crt", directory / "tls.crt", directory / "tls.key"


def validating_webhook_for_loopback(helm: Path, ca_file: Path, port: int) -> dict[str, Any]:
    """The chart's ValidatingWebhookConfiguration, pointed at a webhook served on 127.0.0.1:``port``.

    The chart reaches the operator through a Service; this control plane has no Service network, so the
    clientConfig becomes a URL with the same path. Everything else (rules, failurePolicy, ...) is the chart's.
    """
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    docs = render_chart(helm, "webhook.enabled=true", "webhook.tls.mode=existing", f"webhook.tls.caBundle={ca_bundle}")
    config = next(d for d in docs if d.get("kind") == "ValidatingWebhookConfiguration")
    for hook in config["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
    return config


def iter_docs(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d.get("kind") == kind)


def wait_for_value(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``probe()`` until it returns something other than None; ControlPlaneError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value
