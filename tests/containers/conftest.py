"""Fixtures of the container tier: the locally built images, fake-gcs-server on the host, a store.

The images come from images/build.sh (``./dev test`` runs it first). Without podman or the
images the tests are skipped with the reason, except under ``CI=true``, where that is a broken
setup and fails instead of quietly testing less.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from datarun.config import Config
from datarun.repo import Client, connect
from tests.containers.kubeplay import create_secret, podman_missing, remove_secret
from tests.store.emulators import FakeGCS, gcs_server

__all__ = ["gcs_server"]  # registered by import, as in tests/store/conftest.py


@dataclass(frozen=True)
class Images:
    sidecar: str
    wrapper: str
    base: str
    """The debootstrap'd Debian image: plain ``sh``, coreutils, nothing of datarun (the "app")."""


@pytest.fixture(scope="session")
def images() -> Images:
    tag = version("datarun")
    found = Images(
        sidecar=f"localhost/datarun-sidecar:{tag}",
        wrapper=f"localhost/datarun-wrapper:{tag}",
        base=os.environ.get("DATARUN_TEST_APP_IMAGE", "localhost/datarun-base:bookworm"),
    )
    missing = podman_missing([found.sidecar, found.wrapper, found.base])
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the container tier (./dev test builds the images)", pytrace=False)
        pytest.skip(missing)
    return found


@dataclass(frozen=True)
class RunStore:
    url: str
    secret: str
    """The podman secret (a Kubernetes Secret to the pod) holding the store's credentials."""
    client: Client
    """The host's view of the same store, through datarun's public API."""


@pytest.fixture
def run_store(
    gcs_server: FakeGCS, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunStore]:
    """A fresh bucket on fake-gcs-server, the Secret that points the sidecars at it, a host client."""
    bucket = gcs_server.new_bucket()
    url = f"gs://{bucket}/datarun"
    secret = f"datarun-store-{secrets.token_hex(4)}"
    env = gcs_server.env()
    create_secret(secret, env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATARUN_CACHE_DIR", str(tmp_path / "host-cache"))
    client = connect(url, config=Config(name="container tier", email="ci@example.org"))
    try:
        yield RunStore(url=url, secret=secret, client=client)
    finally:
        client.close()
        remove_secret(secret)
        gcs_server.drop_bucket(bucket)
