"""The postgres sidecar: serve databases, restored from bundles, dumped back to bundles.

Configured datamon-style by ``dm_pg_opts`` (``c`` coord dir, ``V`` ignore version mismatch,
``S`` sleep instead of exiting) and one ``dm_pg_db_<id>`` per database (``p`` port, ``r`` repo,
``l`` label, ``m`` message, ``sr``/``sl``/``sb`` source repo/label/bundle).

The dump is ``pg_dump -Fd -Z0`` (directory format, uncompressed) of every database, plus the
cluster's globals. Directory format splits each table into its own file and ``-Z0`` leaves the
bytes as they are, so content-defined chunking finds unchanged rows between versions and the
CAS compresses what is compressible. A raw data directory, which datamon shipped, is neither
consistent while the server runs nor portable across major versions; a dump is both.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datarun.errors import DatarunError
from datarun.repo import Client, connect
from datarun_sidecar.protocol import Coordination, OutputResult, SidecarResult
from datarun_sidecar.serialmap import SerialMapError, parse_serialized_map

META_FILE = "datarun-postgres.json"


class PostgresSidecarError(Exception):
    pass


@dataclass
class DatabaseSpec:
    id: str
    port: int
    repo: str = ""
    label: str = ""
    message: str = ""
    source_repo: str = ""
    source_label: str = ""
    source_bundle: str = ""


@dataclass
class PostgresPlan:
    coord: Path
    ignore_version: bool
    sleep_after: bool
    databases: list[DatabaseSpec]


def plan_from_env(env: Mapping[str, str]) -> PostgresPlan:
    if "dm_pg_opts" not in env:
        raise PostgresSidecarError(
            "dm_pg_opts is not set; it needs at least the coordination folder, e.g. ';:c:/coord'"
        )
    try:
        opts = parse_serialized_map(env["dm_pg_opts"], name="dm_pg_opts")
        if "c" not in opts or opts["c"] is True:
            raise PostgresSidecarError("dm_pg_opts: `c` (the coordination folder) is required")
        databases = []
        for key in sorted(k for k in env if k.startswith("dm_pg_db_")):
            raw = parse_serialized_map(env[key], name=key)
            db_id = key[len("dm_pg_db_") :]
            port = raw.get("p")
            if not isinstance(port, str) or not port.isdigit():
                raise PostgresSidecarError(f"{key}: `p` (the port) must be a number")
            if bool(raw.get("sl")) and bool(raw.get("sb")):
                raise PostgresSidecarError(f"{key}: give at most one of `sl` (source label) and `sb` (source bundle)")
            databases.append(
                DatabaseSpec(
                    db_id,
                    int(port),
                    str(raw.get("r", "")),
                    str(raw.get("l", "")),
                    str(raw.get("m", f"database {db_id}")),
                    str(raw.get("sr", raw.get("r", ""))),
                    str(raw.get("sl", "")),
                    str(raw.get("sb", "")),
                )
            )
    except SerialMapError as err:
        raise PostgresSidecarError(str(err)) from None
    if not databases:
        raise PostgresSidecarError("no dm_pg_db_<id> variables: nothing to serve")
    return PostgresPlan(
        Path(str(opts["c"])), str(opts.get("V", "false")).lower() == "true", opts.get("S") is True, databases
    )


def plan_from_yaml(path: Path) -> PostgresPlan:
    """The same settings as the env vars, as a YAML file (see sidecar/PROTOCOL.md):

    coord: /coord               # c
    ignoreVersionMismatch: false  # V
    sleepAfter: false           # S
    databases:
      - id: main
        port: 5432              # p
        repo: db                # r
        label: latest           # l
        message: nightly state  # m
        source: {repo: db, label: latest}   # sr + sl, or {repo, bundle}: sr + sb
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PostgresSidecarError(f"config `{path}`: {err}") from None
    if not isinstance(raw, dict) or "coord" not in raw or not raw.get("databases"):
        raise PostgresSidecarError(f"config `{path}`: needs `coord` and a non-empty `databases` list")
    databases = []
    for index, db in enumerate(raw["databases"]):
        where = f"config `{path}`: databases[{index}]"
        if not isinstance(db, dict) or "id" not in db or not isinstance(db.get("port"), int):
            raise PostgresSidecarError(f"{where}: needs `id` and an integer `port`")
        source = db.get("source") or {}
        if source.get("label") and source.get("bundle"):
            raise PostgresSidecarError(f"{where}: source takes `label` or `bundle`, not both")
        databases.append(
            DatabaseSpec(
                str(db["id"]),
                db["port"],
                str(db.get("repo", "")),
                str(db.get("label", "")),
                str(db.get("message", f"database {db['id']}")),
                str(source.get("repo", db.get("repo", ""))),
                str(source.get("label", "")),
                str(source.get("bundle", "")),
            )
        )
    return PostgresPlan(
        Path(str(raw["coord"])),
        bool(raw.get("ignoreVersionMismatch", False)),
        bool(raw.get("sleepAfter", False)),
        databases,
    )


def pg_bin() -> Path:
    """The newest Debian PostgreSQL server present, or PG_BIN."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        raise PostgresSidecarError("no PostgreSQL server found: apt-get install postgresql (or set PG_BIN)")
    return found[-1]


class Server:
    """One throwaway cluster, run as a non-root user (initdb refuses root)."""

    def __init__(self, spec: DatabaseSpec, work: Path) -> None:
        self.spec = spec
        self.bin = pg_bin()
        self.data = work / "data"
        self.sockets = work / "run"
        self.log = work / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else ""
        for path in (work, self.sockets):
            path.mkdir(parents=True, exist_ok=True)
        if self.user:
            uid, gid = pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid
            for path in (work, self.sockets):
                os.chown(path, uid, gid)

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", self.user, "--", *args] if self.user else args
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PostgresSidecarError(
                f"database `{self.spec.id}`: {Path(args[0]).name} failed: {proc.stderr.strip()[-500:]}"
            )
        return proc

    @property
    def major(self) -> int:
        out = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        return int(out.split()[-1].split(".")[0])

    def start(self) -> None:
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-o",
                f"-p {self.spec.port} -k {self.sockets} -c listen_addresses=127.0.0.1",
                "start",
            ]
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def _conn(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.spec.port), "-U", "postgres"]

    def databases(self) -> list[str]:
        out = self._run(
            [
                str(self.bin / "psql"),
                *self._conn(),
                "-At",
                "-d",
                "postgres",
                "-c",
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname",
            ]
        ).stdout
        return [line for line in out.splitlines() if line]

    def dump(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if self.user:
            os.chown(target, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        names = self.databases()
        self._run([str(self.bin / "pg_dumpall"), *self._conn(), "--globals-only", "-f", str(target / "globals.sql")])
        for name in names:
            self._run(
                [str(self.bin / "pg_dump"), *self._conn(), "-Fd", "-Z0", "-j", "2", "-f", str(target / name), name]
            )
        (target / META_FILE).write_text(json.dumps({"format": 1, "major": self.major, "databases": names}) + "\n")

    def restore(self, source: Path, ignore_version: bool) -> None:
        meta = json.loads((source / META_FILE).read_text())
        if meta["major"] != self.major and not ignore_version:
            raise PostgresSidecarError(
                f"database `{self.spec.id}`: the bundle was dumped by PostgreSQL {meta['major']} but this server is "
                f"{self.major}; use a matching image, or set V:true in dm_pg_opts to restore anyway"
            )
        if self.user:
            subprocess.run(["chown", "-R", self.user, str(source)], check=True)
        self._run([str(self.bin / "psql"), *self._conn(), "-q", "-d", "postgres", "-f", str(source / "globals.sql")])
        for name in meta["databases"]:
            if name != "postgres":
                self._run([str(self.bin / "createdb"), *self._conn(), name])
            self._run(
                [str(self.bin / "pg_restore"), *self._conn(), "-j", "2", "--no-owner", "-d", name, str(source / name)]
            )


class PostgresSidecar:
    def __init__(
        self,
        plan: PostgresPlan,
        *,
        store: str | None,
        termination_log: Path | None,
        work_dir: Path | None = None,
        app_heartbeat_timeout: float = 60,
    ) -> None:
        self.plan = plan
        self.store = store
        self.termination_log = termination_log
        self.work = work_dir or Path(tempfile.mkdtemp(prefix="datarun-pg-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # mkdtemp makes 0700; the server runs as `postgres` and must get in
        self.app_heartbeat_timeout = app_heartbeat_timeout
        self.coord = Coordination(plan.coord, "postgres")
        self.servers: list[Server] = []

    def _client(self) -> Client:
        return connect(self.store)

    def _start_all(self) -> None:
        client = self._client()
        try:
            for spec in self.plan.databases:
                server = Server(spec, self.work / spec.id)
                self.servers.append(server)
                server.start()
                if spec.source_label or spec.source_bundle:
                    bundle = client.resolve(spec.source_repo, spec.source_bundle or None, spec.source_label or None)
                    staged = self.work / spec.id / "restore"
                    client.download(bundle, staged, force=True)
                    server.restore(staged, self.plan.ignore_version)
                    shutil.rmtree(staged, ignore_errors=True)
                (self.plan.coord / spec.id).mkdir(parents=True, exist_ok=True)
                (self.plan.coord / spec.id / "dbstarted").write_text("ready\n")  # datamon's marker
        finally:
            client.close()

    def _dump_and_upload(self, app_code: int | None) -> SidecarResult:
        result = SidecarResult("postgres", app_code)
        client = self._client()
        try:
            for server in self.servers:
                spec = server.spec
                out = OutputResult(name=spec.id, repo=spec.repo, path="", label=spec.label)
                result.outputs.append(out)
                if not spec.repo:
                    out.skipped_reason = "no output repo (`r`) configured"
                    continue
                if app_code != 0:
                    out.skipped_reason = f"app did not succeed (code {app_code})"
                    continue
                try:
                    dump = self.work / spec.id / "dump"
                    server.dump(dump)  # the server is still up: pg_dump reads one consistent snapshot
                    done = client.upload(spec.repo, dump, spec.message, label=spec.label or None)
                    out.bundle = done.bundle.id
                    out.uploaded = True
                except (DatarunError, PostgresSidecarError) as err:
                    out.error = str(err)
        finally:
            client.close()
        return result

    def run(self) -> int:
        self.coord.start_heartbeat()
        try:
            try:
                self._start_all()
            except (DatarunError, PostgresSidecarError) as err:
                self.coord.report_failed(str(err))
                self.coord.report_result(SidecarResult("postgres", None, errors=[str(err)]), self.termination_log)
                return 1
            self.coord.report_ready({"databases": [s.spec.id for s in self.servers]}, "dbstarted")
            code, _why = self.coord.wait_for_app_end(self.app_heartbeat_timeout)
            result = self._dump_and_upload(code)
            self.coord.report_result(result, self.termination_log)
            if self.plan.sleep_after:
                while True:  # `S`: keep the pod around for debugging
                    time.sleep(3600)
            return 0 if result.ok else 1
        finally:
            for server in self.servers:
                with contextlib.suppress(PostgresSidecarError):  # best effort: the pod is ending anyway
                    server.stop()
            self.coord.stop_heartbeat()
