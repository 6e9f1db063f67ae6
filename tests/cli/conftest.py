"""Drive the real CLI, in-process for speed and in a subprocess where signals matter."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datarun.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


@dataclass
class Env:
    tmp: Path
    store: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def url(self) -> str:
        return f"file://{self.store}"

    def run(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(["--store", self.url, *args])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.code == 0, result.err
        return result

    def environ(self) -> dict[str, str]:
        return {**os.environ, **_isolated(self.tmp)}

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "datarun.cli.main", "--store", self.url, *args],
            env=self.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _isolated(tmp: Path) -> dict[str, str]:
    return {
        "DATARUN_HOME": str(tmp / "home"),
        "DATARUN_CACHE_DIR": str(tmp / "cache"),
        "DATARUN_CONFIG": str(tmp / "config.yaml"),
    }


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    for key, value in _isolated(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATARUN_STORE", raising=False)
    yield Env(tmp_path, tmp_path / "store", capsys)


def make_tree(root: Path) -> Path:
    """A small folder with the shapes users have: nested files, modes, an empty dir, a link."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "b.txt").write_text("bee\n")
    (root / "a" / "b" / "deep.csv").write_text("x,y\n" * 5000)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = root / "private.key"
    secret.write_bytes(os.urandom(3000))
    secret.chmod(0o600)
    (root / "link").symlink_to("a/b.txt")
    past = 1_700_000_000
    for path in [root / "a" / "b.txt", script, secret, root / "a" / "b" / "deep.csv"]:
        os.utime(path, (past, past))
    return root
