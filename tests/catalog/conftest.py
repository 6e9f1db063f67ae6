"""Fixtures of the catalog tests: an index on each backend, PostgreSQL being Debian's real server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarun.catalog import Index, open_index
from tests.store.emulators import azurite_server

__all__ = ["azurite_server"]  # registered by import, as in tests/store


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL index tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway cluster on loopback; each test gets a fresh database from ``pg_database``."""
    pg = _pg_bin()
    if pg is None:
        _need("no PostgreSQL server here: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _need("psycopg is not installed: pip install 'datarun[postgres]'")
    assert pg is not None
    work = Path(tempfile.mkdtemp(prefix="datarun-pgindex-"))
    work.chmod(0o755)  # the server runs as `postgres` and must get in
    user = "postgres" if os.geteuid() == 0 else ""
    if user:
        entry = pwd.getpwnam(user)
        os.chown(work, entry.pw_uid, entry.pw_gid)
    prefix = ["runuser", "-u", user, "--"] if user else []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data = work / "data"
    options = f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *prefix,
            str(pg / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            *("-E", "UTF8", "--locale=C.UTF-8"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*prefix, str(pg / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(work, ignore_errors=True)


_counter = iter(range(1_000_000))


@pytest.fixture
def pg_database(postgres_url: str) -> str:
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'index.sqlite'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def index(index_url: str, tmp_path: Path) -> Iterator[Index]:
    with open_index(index_url, tmp_path) as opened:
        yield opened
