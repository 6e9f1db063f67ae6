"""The postgres sidecar with Debian's real server: rows written in one run come back in the next."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarun.repo import Client
from datarun.store import LocalStore
from datarun_sidecar.postgres_plan import PostgresSidecarError, plan_from_env

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need_postgres() -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        if os.environ.get("CI") == "true":
            pytest.fail("the postgres tier needs Debian's server: apt-get install postgresql")
        pytest.skip("no PostgreSQL server here")


def _run_pod(tmp: Path, name: str, db_env: str, app_sql: str, port: int) -> tuple[int, dict[str, object], str]:
    coord = tmp / f"coord-{name}"
    env = {
        **os.environ,
        "DATARUN_CACHE_DIR": str(tmp / "cache"),
        "DATARUN_CONFIG": str(tmp / "c.yaml"),
        "dm_pg_opts": f";:c:{coord}",
        "dm_pg_db_main": db_env,
        # What the operator's builder sets (datarun_operator.wire.sidecar_env).
        "DATARUN_RUN_ID": f"team/{name}/uid-{name}",
        "DATARUN_RUN_PARAMS": json.dumps({"pod": name}),
    }
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "datarun_sidecar.cli",
            "postgres",
            "--store",
            f"file://{tmp / 'store'}",
            "--termination-log",
            "",
            "--work-dir",
            str(tmp / f"work-{name}"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    app = (
        f'psql -v ON_ERROR_STOP=1 -qAt -h 127.0.0.1 -p {port} -U postgres -d postgres -c "{app_sql}"'
        f" > {tmp / f'app-{name}.out'}"
    )
    wrapped = subprocess.run(
        [
            "sh",
            str(ROOT / "wrap_application.sh"),
            "-c",
            str(coord),
            "-b",
            "postgres",
            "-r",
            "120",
            "--",
            "sh",
            "-c",
            app,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert sidecar.wait(timeout=120) == 0, sidecar.stderr.read() if sidecar.stderr else ""
    result = json.loads((coord / "postgres" / "result.json").read_text())
    assert (coord / "main" / "dbstarted").exists(), "datamon's marker"
    return wrapped.returncode, result, (tmp / f"app-{name}.out").read_text()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    # pytest's tmp folders are 0700 up the tree; the server runs as `postgres` and must get in.
    path = Path(tempfile.mkdtemp(prefix="datarun-pgtest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_rows_survive_a_dump_upload_and_a_restore(open_tmp: Path) -> None:
    _need_postgres()
    tmp_path = open_tmp
    Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache").create_repo("db")
    port = _free_port()
    create = (
        "CREATE TABLE t (id int primary key, v text); "
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g; "
        "SELECT md5(string_agg(id::text || v, ',' ORDER BY id)) FROM t"
    )
    code, result, first_sum = _run_pod(tmp_path, "one", f";:p:{port};r:db;l:latest;m:first run", create, port)
    assert code == 0 and result["status"] == "ok"
    outputs = result["outputs"]
    assert isinstance(outputs, list) and outputs[0]["uploaded"] is True
    port2 = _free_port()
    check = "SELECT md5(string_agg(id::text || v, ',' ORDER BY id)) FROM t"
    code, result, second_sum = _run_pod(tmp_path, "two", f";:p:{port2};sr:db;sl:latest;r:db;l:latest", check, port2)
    assert code == 0, result
    assert second_sum.strip() == first_sum.strip().splitlines()[-1] and len(second_sum.strip()) == 32
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache2")
    assert [h.seq for h in client.label_history("db", "latest")] == [1, 2]

    # Each dump is committed with its run, and the second with the bundle it was restored from.
    first, second = (client.get_bundle("db", h.bundle) for h in client.label_history("db", "latest"))
    outputs = result["outputs"]
    assert isinstance(outputs, list) and second.id == outputs[0]["bundle"]
    assert first.provenance.inputs == ()
    assert [(i.repo, i.bundle) for i in second.provenance.inputs] == [("db", first.id)]
    for bundle, name in ((first, "one"), (second, "two")):
        run = bundle.provenance.run
        assert run is not None, name
        assert (run.run_id, run.exit_code, run.params) == (f"team/{name}/uid-{name}", 0, {"pod": name})
        assert "psql" in " ".join(run.command)


def test_env_parsing_errors_are_clear() -> None:
    with pytest.raises(PostgresSidecarError, match="dm_pg_opts is not set"):
        plan_from_env({})
    with pytest.raises(PostgresSidecarError, match="`p` \\(the port\\) must be a number"):
        plan_from_env({"dm_pg_opts": ";:c:/c", "dm_pg_db_x": ";:p:abc"})
    with pytest.raises(PostgresSidecarError, match="at most one of `sl`"):
        plan_from_env({"dm_pg_opts": ";:c:/c", "dm_pg_db_x": ";:p:1;sl:a;sb:b"})
    plan = plan_from_env({"dm_pg_opts": ";:c:/c;V:true;S", "dm_pg_db_x": ";:p:5432;r:db;l:v1;m:msg"})
    assert plan.ignore_version and plan.sleep_after and plan.databases[0].port == 5432


def test_yaml_config_is_equivalent_to_the_env_vars(tmp_path: Path) -> None:
    from datarun_sidecar.postgres_plan import plan_from_yaml

    config = tmp_path / "pg.yaml"
    config.write_text(
        "coord: /coord\nignoreVersionMismatch: true\ndatabases:\n"
        "  - {id: main, port: 5432, repo: db, label: latest, message: m, source: {repo: db, label: v1}}\n"
    )
    from_yaml = plan_from_yaml(config)
    from_env = plan_from_env(
        {"dm_pg_opts": ";:c:/coord;V:true", "dm_pg_db_main": ";:p:5432;r:db;l:latest;m:m;sr:db;sl:v1"}
    )
    assert from_yaml == from_env
    config.write_text("coord: /c\ndatabases:\n  - {id: x, port: 1, source: {label: a, bundle: b}}\n")
    with pytest.raises(PostgresSidecarError, match="not both"):
        plan_from_yaml(config)
    config.write_text("databases: []\n")
    with pytest.raises(PostgresSidecarError, match="needs `coord`"):
        plan_from_yaml(config)


def test_a_failed_pg_dump_commits_no_bundle_and_does_not_hang(
    open_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One database dumps fine, the other's pg_dump fails (it does not exist): the bytes that
    did stream in stay unreferenced, the error names the database, and nothing waits forever on
    a pipe that no pg_dump will ever open."""
    _need_postgres()
    from datarun_sidecar.postgres import Server, upload_dump
    from datarun_sidecar.postgres_plan import DatabaseSpec

    work = open_tmp
    server = Server(DatabaseSpec("main", _free_port()), work / "pg")
    server.start()
    try:
        real = server.databases
        monkeypatch.setattr(server, "databases", lambda: [*real(), "no_such_database"])
        client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
        client.create_repo("db")
        with pytest.raises(PostgresSidecarError, match="no_such_database"):
            upload_dump(server, client, work / "dump", "db", "m", "latest")
        assert client.list_bundles("db") == []
        assert not (work / "dump").exists(), "the pipes and globals are cleaned up"
        monkeypatch.setattr(server, "databases", real)
        done = upload_dump(server, client, work / "dump", "db", "m", "latest")
        assert [b.id for b in client.list_bundles("db")] == [done.bundle.id]
        names = sorted(e.path for e in client.list_files(done.bundle))
        assert names == ["datarun-postgres.json", "db-000.dump", "globals.sql"]
        client.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "meta",
    [
        '{"format": 1, "major": 15, "databases": ["postgres"]}',  # a -Fd folder per database: never released
        '{"format": 2, "major": 15, "databases": ["postgres"], "files": {}}',
        "not json",
    ],
)
def test_a_bundle_that_is_not_a_dump_it_reads_is_refused_naming_it(open_tmp: Path, meta: str) -> None:
    """Restoring from anything but what the sidecar uploads is a clear error before the server is touched."""
    _need_postgres()
    from datarun_sidecar.postgres import META_FILE, Server
    from datarun_sidecar.postgres_plan import DatabaseSpec

    client = Client(LocalStore(open_tmp / "store"), cache_dir=open_tmp / "cache")
    client.create_repo("db")
    src = open_tmp / "src"
    src.mkdir()
    (src / META_FILE).write_text(meta)
    bundle = client.upload("db", src, "not a dump").bundle
    server = Server(DatabaseSpec("main", _free_port()), open_tmp / "pg")
    with pytest.raises(PostgresSidecarError, match=f"bundle {bundle.id} of repo `db` is not a postgres dump"):
        server.restore_bundle(client, bundle, open_tmp / "staging", ignore_version=False)
    client.close()
