"""Backends under contract: memory, a local folder, Azurite (Azure Blob) and fake-gcs-server (GCS).

The emulators are started once per session (tests/store/emulators.py); every test gets a fresh
container or bucket with a random name, so tests never see each other's objects.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarun.store import LocalStore, MemoryStore, ObjectStore
from tests.store.emulators import Emulator, azurite_server, gcs_server

__all__ = ["azurite_server", "cloud", "gcs_server", "store"]  # the emulator fixtures are registered by import

CLOUD = {"azurite": "azurite_server", "gcs": "gcs_server"}


@pytest.fixture(params=["memory", "local", "azurite", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param in CLOUD:
        server: Emulator = request.getfixturevalue(CLOUD[request.param])
        bucket = server.new_bucket()
        backend = server.store(bucket)
        yield backend
        backend.close()
        server.drop_bucket(bucket)
        return
    backend = MemoryStore(secrets.token_hex(4)) if request.param == "memory" else LocalStore(tmp_path / "store")
    yield backend
    backend.close()


@pytest.fixture(params=list(CLOUD))
def cloud(request: pytest.FixtureRequest) -> Emulator:
    """Each session emulator in turn, for tests that only make sense against a remote store."""
    server: Emulator = request.getfixturevalue(CLOUD[request.param])
    return server
