"""Backends under contract. The cloud issue adds Azurite and fake-gcs-server here."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarun.store import LocalStore, MemoryStore, ObjectStore


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    backend: ObjectStore = (
        MemoryStore(secrets.token_hex(4)) if request.param == "memory" else LocalStore(tmp_path / "store")
    )
    yield backend
    backend.close()
