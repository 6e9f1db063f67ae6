"""A bundle with CSV, parquet and a many-chunk binary file, on the local store and on Azurite."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from datarun.fs.spec import DatarunFileSystem
from datarun.repo import Client, connect
from tests.store.emulators import Azurite, azurite_server

__all__ = ["azurite_server", "served"]


@dataclass(frozen=True)
class Served:
    url: str  # the store URL, as a user passes it in storage_options
    client: Client
    src: Path
    bundle_id: str


def make_source(root: Path) -> Path:
    src = root / "src"
    (src / "pq").mkdir(parents=True)
    pd.DataFrame({"id": range(20), "name": [f"frame-{i}" for i in range(20)]}).to_csv(src / "meta.csv", index=False)
    rng = np.random.default_rng(7)
    for i in range(3):
        frame = pd.DataFrame({"x": np.arange(1000) + i * 1000, "y": rng.random(1000)})
        frame.to_parquet(src / "pq" / f"part-{i}.parquet")
    # Random bytes do not compress: ~12 chunks of ~1 MiB, so ranged reads have chunks to skip.
    (src / "big.bin").write_bytes(os.urandom(12 << 20))
    return src


@pytest.fixture(params=["local", "azurite"])
def served(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    # The fsspec instance cache would hand one test's filesystem to the next.
    fsspec.register_implementation("datarun", DatarunFileSystem, clobber=True)
    DatarunFileSystem.clear_instance_cache()
    monkeypatch.setenv("DATARUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DATARUN_HOME", str(tmp_path / "home"))
    server: Azurite | None = None
    bucket = ""
    if request.param == "azurite":
        server = request.getfixturevalue("azurite_server")
        bucket = server.new_bucket()
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"az://{bucket}/{secrets.token_hex(3)}"
    else:
        url = f"file://{tmp_path / 'store'}"
    client = connect(url)
    client.create_repo("images", "test frames")
    src = make_source(tmp_path)
    bundle = client.upload("images", src, "frames", label="latest").bundle
    yield Served(url, client, src, bundle.id)
    client.close()
    DatarunFileSystem.clear_instance_cache()
    if server is not None:
        server.drop_bucket(bucket)
