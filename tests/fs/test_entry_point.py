"""The `fsspec.specs` entry point, as installed from a built wheel.

The shared dev venv holds an editable install made before the entry point existed, and
reinstalling it there is not ours to do; so this builds the wheel (pip, hatchling from the
index), unpacks it, and in a fresh interpreter with only that on the path checks that a bare
``import fsspec`` finds ``datarun://`` by itself, with no ``register_implementation`` call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from datarun.repo import Client
from datarun.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys, fsspec
fs = fsspec.filesystem("datarun", store=sys.argv[1])
print(type(fs).__module__, fs.cat_file("r@latest/hello.txt").decode())
"""


@pytest.mark.slow
def test_a_built_wheel_registers_the_datarun_protocol(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("datarun-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "[fsspec.specs]\ndatarun = datarun.fs.spec:DatarunFileSystem" in archive.read(points).decode()
        # The web view's templates are package data: without them `datarun web` serves nothing.
        assert "datarun/web/templates/bundle.html" in archive.namelist()
        archive.extractall(tmp_path / "site")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hi from a bundle")
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("r")
    client.upload("r", src, "m", label="latest")
    client.close()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "DATARUN_CACHE_DIR": str(tmp_path / "cache")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, f"file://{tmp_path / 'store'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split(maxsplit=1) == ["datarun.fs.spec", "hi from a bundle\n"]
