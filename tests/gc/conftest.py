"""Fixtures for lifecycle, gc and check: a client on a real local store, trees of random data.

The emulator fixtures are imported from tests/store so the race test can run on Azurite too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarun.gc.collect import GcOptions, collect
from datarun.gc.repack import repack_packs
from datarun.repo import Client
from datarun.store import LocalStore
from tests.store.emulators import azurite_server

__all__ = ["azurite_server"]

NOW = GcOptions(grace=0.0, commit_timeout=2.0, max_unused=1.0)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    store = LocalStore(tmp_path / "store")
    with Client(store, cache_dir=tmp_path / "cache", author=("tester", "t@example.com"), workers=2) as c:
        yield c


def random_tree(root: Path, files: int = 3, size: int = 200_000, seed: int | None = None) -> Path:
    """Incompressible, unique data, so every bundle's bytes are its own."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(os.urandom(size))
    return root


def gc_now(client: Client, options: GcOptions = NOW, repack: bool = False) -> object:
    return collect(client.meta, client.blobs, options, repack=repack_packs if repack else None)


def store_bytes(root: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in (root / prefix).rglob("*") if p.is_file())
