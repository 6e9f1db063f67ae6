"""Sidecar benchmark: what the protocol costs, and the postgres sidecar against bare pg tools.

    .venv/bin/python bench/bench_sidecar.py                 # a 1 GiB database, each postgres step twice
    .venv/bin/python bench/bench_sidecar.py --db-mib 4096   # another size (pg_database_size, roughly)
    .venv/bin/python bench/bench_sidecar.py --small         # a 64 MiB database, a smoke run

Rows:
- fuse sidecar overhead: a full wrapper + sidecar run around an app that does nothing, minus the
  same mount and upload done bare with the CLI (bar: within 2 s);
- postgres dump and upload vs a bare `pg_dump -Fc -Z0` to a local file (bar: at most 1.5x), on
  the same server after an untimed warm-up dump; also against `--no-sync`, for reference;
- postgres download and restore vs a bare `pg_restore -j 2` from local disk (bar: at most 1.5x),
  each into a fresh cluster with the same default settings;
- re-upload after 1% of the rows changed: bytes written vs the first upload (bar: at most 10%).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datarun.repo import Client, UploadResult
from datarun.store import LocalStore
from datarun_sidecar.postgres import Server, pg_bin, upload_dump
from datarun_sidecar.postgres_plan import DatabaseSpec

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    scenario: str
    datarun: float
    baseline: str
    baseline_value: float
    figure: str
    bar: str
    passed: bool


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fuse_overhead(work: Path) -> Row:
    work.mkdir(parents=True)
    env = {**os.environ, "DATARUN_CACHE_DIR": str(work / "cache"), "DATARUN_CONFIG": str(work / "c.yaml")}
    store = f"file://{work / 'store'}"
    client = Client(LocalStore(work / "store"), cache_dir=work / "cache")
    client.create_repo("in")
    client.create_repo("out")
    src = work / "in-src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i}.bin").write_bytes(os.urandom(64 << 10))
    client.upload("in", src, "input", label="v1")
    out = work / "out-src"
    out.mkdir()
    (out / "result.txt").write_text("42\n")
    cli = [sys.executable, "-m", "datarun.cli.main", "--store", store]

    def bare() -> None:
        ready = work / "bare.ready"
        proc = subprocess.Popen(
            [
                *cli,
                "bundle",
                "mount",
                "--repo",
                "in",
                "--label",
                "v1",
                "--mount",
                str(work / "bare-mnt"),
                "--ready-file",
                str(ready),
            ],
            env=env,
        )
        while not ready.exists():
            time.sleep(0.01)
        subprocess.run(["fusermount3", "-u", str(work / "bare-mnt")], check=True)
        proc.wait()
        subprocess.run(
            [*cli, "-q", "bundle", "upload", "--path", str(out), "--message", "m", "--repo", "out"],
            env=env,
            check=True,
            capture_output=True,
        )

    def full() -> None:
        coord = work / f"coord-{time.monotonic_ns()}"
        sidecar = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datarun_sidecar.cli",
                "fuse",
                "-c",
                str(coord),
                "--store",
                store,
                "--termination-log",
                "",
                "-d",
                f"bundle mount --repo in --label v1 --mount {work / 'sc-mnt'}",
                "-d",
                f"bundle upload --path {out} --message m --repo out",
            ],
            env=env,
        )
        subprocess.run(
            ["sh", str(ROOT / "wrap_application.sh"), "-c", str(coord), "-b", "fuse", "--", "true"], env=env, check=True
        )
        sidecar.wait()

    bare_s = min(_timed(bare) for _ in range(3))
    full_s = min(_timed(full) for _ in range(3))
    return Row(
        "fuse sidecar around a no-op app (s)",
        full_s,
        "bare mount + upload with the CLI",
        bare_s,
        f"overhead {full_s - bare_s:+.2f} s",
        "within 2 s",
        full_s - bare_s <= 2.0,
    )


_STARTED: list[Server] = []  # stopped by main() whatever happens, so a failed run leaves no server behind


def _fresh_server(work: Path, name: str) -> Server:
    server = Server(DatabaseSpec(name, _port()), work / name)
    _STARTED.append(server)
    server.start()
    return server


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}" if len(values) == 1 else f"{min(values):.2f}-{max(values):.2f}"


def postgres_rows(work: Path, db_mib: int, reps: int) -> list[Row]:
    """Every timed step runs ``reps`` times, datarun and bare interleaved, each datarun upload
    into a fresh store (so no repetition dedups against another) and each restore into a
    fresh cluster; the best of each side is compared, and the range is shown."""
    work.mkdir(parents=True)
    work.chmod(0o755)
    server = _fresh_server(work, "pg")
    psql = [
        str(server.bin / "psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(server.spec.port),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-qAt",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    # ~180 bytes per row on disk with its primary-key entry (measured: 7.67M rows made 1,324
    # MiB), toast-free; the table is what pg_database_size reports, so aim at that.
    rows_wanted = db_mib * (1 << 20) // 180
    subprocess.run(
        [*psql, "-c", "CREATE TABLE t (id bigint PRIMARY KEY, a text, b double precision, c text)"], check=True
    )
    subprocess.run(
        [
            *psql,
            "-c",
            f"INSERT INTO t SELECT g, md5(g::text), random(), repeat(md5((g*7)::text), 2) "
            f"FROM generate_series(1, {rows_wanted}) g",
        ],
        check=True,
    )
    # Hint bits and the visibility map set, and dirty pages flushed, now rather than during a timed dump.
    subprocess.run([*psql, "-c", "VACUUM ANALYZE t"], check=True)
    subprocess.run([*psql, "-c", "CHECKPOINT"], check=True)
    db_size = int(
        subprocess.run(
            [*psql, "-c", "SELECT pg_database_size('postgres')"], check=True, capture_output=True, text=True
        ).stdout
    )
    bare_dir = work / "pg" / "bare-dump"  # inside the folder the server user owns
    bare_dir.mkdir()
    subprocess.run(["chown", "postgres", str(bare_dir)], check=True)
    bare_file = bare_dir / "postgres.dump"
    pg_dump = [str(server.bin / "pg_dump"), *server._conn(), "-Fc", "-Z0"]
    # An untimed dump first, so that every timed one, bare or not, finds the table in the page cache.
    server._run([*pg_dump, "--no-sync", "-f", "/dev/null", "postgres"])
    bare_dumps: list[float] = []
    nosync_dumps: list[float] = []
    sidecar_dumps: list[float] = []
    first: UploadResult | None = None
    client: Client | None = None
    for rep in range(reps):
        bare_file.unlink(missing_ok=True)
        # The same pg_dump the sidecar runs, writing a local file: by default pg_dump fsyncs it,
        # as datarun's local store fsyncs its packs, so both end durable.
        bare_dumps.append(_timed(lambda: server._run([*pg_dump, "-f", str(bare_file), "postgres"])))
        store_client = Client(LocalStore(work / f"store-{rep}"), cache_dir=work / f"cache-{rep}")
        store_client.create_repo("db")
        holder: dict[str, UploadResult] = {}

        def dump_and_upload(c: Client = store_client, h: dict[str, UploadResult] = holder) -> None:
            h["done"] = upload_dump(server, c, work / "dump", "db", "v1", "latest")

        sidecar_dumps.append(_timed(dump_and_upload))
        if first is None:
            first, client = holder["done"], store_client
        else:
            store_client.close()
    nosync = bare_dir / "nosync.dump"
    for _ in range(reps):
        nosync_dumps.append(_timed(lambda: server._run([*pg_dump, "--no-sync", "-f", str(nosync), "postgres"])))
        nosync.unlink()
    assert first is not None and client is not None
    kept: Client = client  # the first store, which the dedup rows and the restores use
    # 1% of the rows change, then the same dump-and-upload again into the first store: once as a
    # contiguous batch (a day's records corrected), once scattered evenly (every 100th row), which
    # touches every ~14 KB of the dump and so every 1 MiB chunk: shown so the limit of chunk-level
    # dedup is plain.
    subprocess.run([*psql, "-c", f"UPDATE t SET b = b + 1 WHERE id <= {rows_wanted // 100}"], check=True)
    second = upload_dump(server, client, work / "dump2", "db", "v2", "latest")
    subprocess.run([*psql, "-c", "UPDATE t SET b = b + 1 WHERE id % 100 = 0"], check=True)
    third = upload_dump(server, client, work / "dump3", "db", "v3", "latest")
    server.stop()
    # Restores of the first version, each into a fresh cluster with the same (default) settings,
    # both with pg_restore -j 2.
    subprocess.run(["chown", "-R", "postgres", str(bare_dir)], check=True)
    bundle = client.resolve("db", bundle=first.bundle.id)
    bare_restores: list[float] = []
    sidecar_restores: list[float] = []
    for rep in range(reps):
        target = _fresh_server(work, f"bare-{rep}")
        restore = [str(target.bin / "pg_restore"), *target._conn(), "-j", "2", "--no-owner", "-d", "postgres"]

        def bare_restore(t: Server = target, r: list[str] = restore) -> None:
            t._run([*r, str(bare_file)])

        bare_restores.append(_timed(bare_restore))
        target.stop()
        shutil.rmtree(work / f"bare-{rep}")
        target = _fresh_server(work, f"side-{rep}")
        staged = work / f"restore-{rep}"

        # What the sidecar does at start: the dump streams from the store into pg_restore.
        def download_and_restore(t: Server = target, s: Path = staged) -> None:
            t.restore_bundle(kept, bundle, s, ignore_version=False)

        sidecar_restores.append(_timed(download_and_restore))
        target.stop()
        shutil.rmtree(work / f"side-{rep}")
        shutil.rmtree(staged)
    client.close()
    first_bytes = first.stats.bytes_stored
    second_bytes = second.stats.bytes_stored
    size_note = f"{db_size / 2**20:,.0f} MiB database"
    dump_ratio = min(sidecar_dumps) / min(bare_dumps)
    restore_ratio = min(sidecar_restores) / min(bare_restores)
    return [
        Row(
            f"postgres dump + upload, {size_note} (s)",
            min(sidecar_dumps),
            f"bare pg_dump -Fc -Z0 to a local file ({_spread(bare_dumps)} s; datarun {_spread(sidecar_dumps)} s)",
            min(bare_dumps),
            f"{dump_ratio:.2f}x",
            "<= 1.5x",
            dump_ratio <= 1.5,
        ),
        Row(
            "the same, against pg_dump --no-sync (s)",
            min(sidecar_dumps),
            f"bare pg_dump -Fc -Z0 --no-sync, not durable ({_spread(nosync_dumps)} s)",
            min(nosync_dumps),
            f"{min(sidecar_dumps) / min(nosync_dumps):.2f}x",
            "informational",
            True,
        ),
        Row(
            f"postgres download + restore, {size_note} (s)",
            min(sidecar_restores),
            f"bare pg_restore -j 2 from disk ({_spread(bare_restores)} s; datarun {_spread(sidecar_restores)} s)",
            min(bare_restores),
            f"{restore_ratio:.2f}x",
            "<= 1.5x",
            restore_ratio <= 1.5,
        ),
        Row(
            "re-upload after 1% of rows changed, contiguous (MiB written)",
            second_bytes / 2**20,
            "first upload (MiB written)",
            first_bytes / 2**20,
            f"{100 * second_bytes / first_bytes:.1f}%",
            "<= 10%",
            second_bytes <= 0.10 * first_bytes,
        ),
        Row(
            "re-upload after 1% of rows changed, every 100th row (MiB written)",
            third.stats.bytes_stored / 2**20,
            "first upload (MiB written)",
            first_bytes / 2**20,
            f"{100 * third.stats.bytes_stored / first_bytes:.1f}%",
            "informational",
            True,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a 64 MiB database (--db-mib 64), for a smoke run")
    parser.add_argument(
        "--db-mib", type=int, default=1024, help="database size to aim at, as pg_database_size (default: 1 GiB)"
    )
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each timed postgres step (best kept)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a bar is missed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datarun-bench-sidecar-"))
    work.chmod(0o755)
    try:
        rows = [fuse_overhead(work / "fuse"), *postgres_rows(work / "pg", 64 if args.small else args.db_mib, args.reps)]
    finally:
        for server in _STARTED:
            with contextlib.suppress(Exception):  # already failing: keep the first error
                server.stop()
        for mnt in work.rglob("*mnt"):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
    version = subprocess.run([str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True).stdout
    print(f"\n{version.strip()}; each postgres step run {args.reps} times, datarun and bare interleaved, best kept\n")
    print("| scenario | datarun | baseline | baseline value | figure | bar | pass |")
    print("|---|---:|---|---:|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.datarun:.2f} | {r.baseline} | {r.baseline_value:.2f} | {r.figure} | {r.bar} | "
            f"{'yes' if r.passed else 'NO'} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 1 if args.strict and not all(r.passed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
