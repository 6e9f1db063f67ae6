"""The postgres sidecar: serve databases, restored from bundles, dumped back to bundles.

Configured datamon-style by ``dm_pg_opts`` and one ``dm_pg_db_<id>`` per database
(:mod:`datarun_sidecar.postgres_plan`).

The dump is ``pg_dump -Fc -Z0`` (custom format, uncompressed) of every database, streamed
through a named pipe into the upload, plus the cluster's globals. ``-Z0`` leaves the rows as
they are, so content-defined chunking finds unchanged rows between versions and the CAS
compresses what is compressible, on several cores; streaming overlaps dumping with uploading
and writes no copy of the dump to disk. A raw data directory, which datamon shipped, is neither
consistent while the server runs nor portable across major versions; a dump is both.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from datarun.model import Bundle, BundleRef, RunRecord
from datarun.repo import Client, UploadResult, connect
from datarun.runs import BundleLink, CacheStamp, Run
from datarun_sidecar.postgres_plan import DatabaseSpec, PostgresPlan, PostgresSidecarError
from datarun_sidecar.protocol import Coordination, PlannedOutput, SidecarResult, run_lifecycle

META_FILE = "datarun-postgres.json"
DUMP_FORMAT = 2
"""What ``META_FILE`` says a bundle holds: one ``pg_dump -Fc`` file per database."""


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

    @functools.cached_property
    def major(self) -> int:
        """The server's major version; asked once (a subprocess), since the binaries do not change under us."""
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

    def _chown(self, path: Path) -> None:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start_dump(self, target: Path) -> DumpJob:
        """Start dumping every database into named pipes under ``target``; return at once.

        Each database gets ``pg_dump -Fc -Z0 --no-sync`` writing into a pipe that the uploader
        reads (``read_fifos``): the dump streams straight into the CAS, overlapped with
        chunking, compression and upload, and is never written to local disk. Custom format
        with no compression keeps each table's rows as they are (with a small per-row header),
        so content-defined chunking still finds the unchanged rows of the next version, and
        ``pg_restore -j`` restores it in parallel once downloaded to a file. The cluster's
        globals (roles) are small and go in a plain file first.
        """
        target.mkdir(parents=True, exist_ok=True)
        self._chown(target)
        names = self.databases()
        self._run([str(self.bin / "pg_dumpall"), *self._conn(), "--globals-only", "-f", str(target / "globals.sql")])
        files = {name: f"db-{index:03d}.dump" for index, name in enumerate(names)}
        meta = {"format": DUMP_FORMAT, "major": self.major, "layout": "custom", "databases": names, "files": files}
        (target / META_FILE).write_text(json.dumps(meta) + "\n")
        job = DumpJob(self.spec.id)
        for name, file_name in files.items():
            fifo = target / file_name
            os.mkfifo(fifo, 0o600)
            self._chown(fifo)
            argv = [str(self.bin / "pg_dump"), *self._conn(), "-Fc", "-Z0", "--no-sync", "-f", str(fifo), name]
            argv = ["runuser", "-u", self.user, "--", *argv] if self.user else argv
            job.add(name, fifo, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        return job

    def _check_version(self, meta: dict[str, Any], ignore_version: bool) -> None:
        if meta["major"] != self.major and not ignore_version:
            raise PostgresSidecarError(
                f"database `{self.spec.id}`: the bundle was dumped by PostgreSQL {meta['major']} but this server is "
                f"{self.major}; use a matching image, or set V:true in dm_pg_opts to restore anyway"
            )

    def restore_bundle(self, client: Client, bundle: Bundle, staging: Path, ignore_version: bool) -> None:
        """Restore ``bundle`` into this server, each dump streamed from the store into pg_restore.

        Only the small files (the metadata and the globals) are downloaded into ``staging``.
        Each database's custom-format dump goes through a pipe into ``pg_restore``'s stdin, so
        the restore starts with the first chunk and overlaps the download, and no copy of the
        dump is written to disk (nor flushed to it while the server is fsyncing its own writes).
        A pipe means one restore job: ``-j`` needs a seekable file, and these dumps carry no data
        offsets anyway (pg_dump wrote them into a pipe), so parallel workers would each scan the
        file for their table.
        """
        staging.mkdir(parents=True, exist_ok=True)
        self._chown(staging)
        client.download_file(bundle, META_FILE, staging, force=True)
        meta = self._read_meta(staging / META_FILE, bundle)
        self._check_version(meta, ignore_version)
        client.download_file(bundle, "globals.sql", staging, force=True)
        self._chown(staging / "globals.sql")
        self._run([str(self.bin / "psql"), *self._conn(), "-q", "-d", "postgres", "-f", str(staging / "globals.sql")])
        for name in meta["databases"]:
            if name != "postgres":
                self._run([str(self.bin / "createdb"), *self._conn(), name])
            self._stream_restore(client, bundle, meta["files"][name], name, staging)

    def _read_meta(self, path: Path, bundle: Bundle) -> dict[str, Any]:
        """The dump's metadata; anything but what ``start_dump`` writes is refused, naming the bundle."""
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            meta = None
        files = meta.get("files") if isinstance(meta, dict) else None
        if (
            not isinstance(meta, dict)
            or meta.get("format") != DUMP_FORMAT
            or not isinstance(meta.get("major"), int)
            or not isinstance(files, dict)
            or not isinstance(meta.get("databases"), list)
            or any(name not in files for name in meta["databases"])
        ):
            raise PostgresSidecarError(
                f"database `{self.spec.id}`: bundle {bundle.id} of repo `{bundle.repo}` is not a postgres dump this "
                f"sidecar reads ({META_FILE} format {DUMP_FORMAT}); restore from a bundle the postgres sidecar uploaded"
            )
        return meta

    def _stream_restore(self, client: Client, bundle: Bundle, file_name: str, database: str, staging: Path) -> None:
        argv = [str(self.bin / "pg_restore"), *self._conn(), "-Fc", "--no-owner", "-d", database]
        argv = ["runuser", "-u", self.user, "--", *argv] if self.user else argv
        # stderr into a file, not a pipe: unread, a pipe could fill and stall pg_restore while
        # we are blocked writing its stdin.
        with tempfile.TemporaryFile("w+", dir=staging) as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            try:
                client.stream_file(bundle, file_name, proc.stdin.write)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading; its exit code and message say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                with contextlib.suppress(OSError):  # closing flushes, which a dead reader refuses
                    proc.stdin.close()
            code = proc.wait()
            err.seek(0)
            message = err.read().strip()
        if code != 0:
            raise PostgresSidecarError(
                f"database `{self.spec.id}`: pg_restore of `{database}` failed ({code}): {message[-500:]}"
            )


class DumpJob:
    """The running ``pg_dump`` processes of one server, one per database, each behind a pipe."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._dumps: list[tuple[str, Path, subprocess.Popen[str]]] = []
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._unblock_readers, name="pg-dump-watch", daemon=True)

    def add(self, name: str, fifo: Path, proc: subprocess.Popen[str]) -> None:
        self._dumps.append((name, fifo, proc))
        if not self._watcher.is_alive():
            self._watcher.start()

    def _unblock_readers(self) -> None:
        """A pg_dump that fails before opening its pipe would leave the uploader blocked in
        open(2) forever. Once such a process has exited, open the pipe as a writer and close it
        again, so the reader sees end-of-file; ``check`` then refuses to commit the bundle."""
        while not self._done.wait(0.2):
            for _, fifo, proc in self._dumps:
                if proc.poll() not in (None, 0):
                    with contextlib.suppress(OSError):
                        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    def check(self) -> None:
        """Wait for every pg_dump; raise if any failed, so the upload commits no bundle."""
        failures = []
        for name, _, proc in self._dumps:
            _, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"pg_dump of `{name}` failed ({proc.returncode}): {err.strip()[-300:]}")
        self.close()
        if failures:
            raise PostgresSidecarError(f"database `{self.server_id}`: " + "; ".join(failures))

    def close(self) -> None:
        self._done.set()
        for _, _, proc in self._dumps:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def upload_dump(
    server: Server,
    client: Client,
    work: Path,
    repo: str,
    message: str,
    label: str,
    *,
    inputs: tuple[BundleRef, ...] = (),
    run: RunRecord | None = None,
) -> UploadResult:
    """Dump every database of ``server`` straight into a new bundle of ``repo``, whose provenance
    names ``inputs`` (the bundle the server was restored from) and ``run``.

    The server is still up, so each pg_dump reads one consistent snapshot. A failed pg_dump
    makes ``before_commit`` raise: the bytes are in the store, but no bundle names them.
    """
    job: DumpJob | None = None
    try:
        job = server.start_dump(work)
        return client.upload(
            repo,
            work,
            message,
            label=label or None,
            inputs=inputs,
            run=run,
            read_fifos=True,
            before_commit=job.check,
        )
    finally:
        if job is not None:
            job.close()
        shutil.rmtree(work, ignore_errors=True)


class PostgresSidecar:
    """Serves the databases while the app runs (restored from their sources), then dumps them."""

    kind = "postgres"
    ready_marker = "dbstarted"

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
        self.sources: dict[str, BundleRef] = {}
        """Database id -> the bundle it was restored from (pinned here when given by label)."""

    def prepare(self) -> dict[str, Any]:
        client = connect(self.store)
        try:
            for spec in self.plan.databases:
                server = Server(spec, self.work / spec.id)
                self.servers.append(server)
                server.start()
                if spec.source_label or spec.source_bundle:
                    bundle = client.resolve(spec.source_repo, spec.source_bundle or None, spec.source_label or None)
                    self.sources[spec.id] = BundleRef(spec.source_repo, bundle.id)
                    staged = self.work / spec.id / "restore"
                    server.restore_bundle(client, bundle, staged, self.plan.ignore_version)
                    shutil.rmtree(staged, ignore_errors=True)
                (self.plan.coord / spec.id).mkdir(parents=True, exist_ok=True)
                (self.plan.coord / spec.id / "dbstarted").write_text("ready\n")  # datamon's marker
        finally:
            client.close()
        return {"databases": [s.spec.id for s in self.servers]}

    def app_ended(self) -> None:
        pass  # the servers stay up: the dumps read them

    def outputs(self, app_code: int | None, why: str) -> list[PlannedOutput]:
        planned = []
        for server in self.servers:
            spec = server.spec
            skip = ""
            if not spec.repo:
                skip = "no output repo (`r`) configured"
            elif app_code != 0:
                skip = f"app did not succeed (code {app_code})"
            upload = functools.partial(self._upload_dump, server)
            planned.append(
                PlannedOutput(name=spec.id, repo=spec.repo, label=spec.label, skipped_reason=skip, upload=upload)
            )
        return planned

    def _upload_dump(self, server: Server, client: Client, run: RunRecord) -> UploadResult:
        spec = server.spec
        source = self.sources.get(spec.id)
        work = self.work / spec.id / "dump"
        inputs = (source,) if source else ()
        return upload_dump(server, client, work, spec.repo, spec.message, spec.label, inputs=inputs, run=run)

    def run_inputs(self) -> list[BundleLink]:
        return [BundleLink(db_id, ref.repo, ref.bundle) for db_id, ref in self.sources.items()]

    def cache_stamp(self) -> CacheStamp | None:
        return None  # a pod with a database has no run cache plan (its dump cannot be reused)

    def recorded(self, client: Client, result: SidecarResult, run: Run | None) -> None:
        pass

    def linger(self) -> None:
        while self.plan.sleep_after:  # `S`: keep the pod around for debugging
            time.sleep(3600)

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(PostgresSidecarError):  # best effort: the pod is ending anyway
                server.stop()

    def run(self) -> int:
        return run_lifecycle(self)
