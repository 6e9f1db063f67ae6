"""Sidecar benchmark: what the protocol costs, and the postgres sidecar against bare pg tools.

    .venv/bin/python bench/bench_sidecar.py            # 1 GiB database
    .venv/bin/python bench/bench_sidecar.py --small    # 64 MiB database, a smoke run

Rows:
- fuse sidecar overhead: a full wrapper + sidecar run around an app that does nothing, minus the
  same mount and upload done bare with the CLI (bar: within 2 s);
- postgres dump and upload vs a bare `pg_dump -Fc -Z0` to a local file (bar: at most 1.5x);
- postgres download and restore vs a bare `pg_restore` from local disk (bar: at most 1.5x);
- re-upload after 1% of the rows changed: bytes written vs the first upload (bar: at most 10%).
"""

from __future__ import annotations

import argparse
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
from datarun_sidecar.postgres import DatabaseSpec, Server, upload_dump

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


def postgres_rows(work: Path, size_mib: int) -> list[Row]:
    work.mkdir(parents=True)
    work.chmod(0o755)
    server = Server(DatabaseSpec("bench", _port()), work / "pg")
    server.start()
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
    rows_wanted = size_mib * (1 << 20) // 140  # ~140 bytes per row on disk, toast-free
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
    db_size = int(
        subprocess.run(
            [*psql, "-c", "SELECT pg_database_size('postgres')"], check=True, capture_output=True, text=True
        ).stdout
    )
    client = Client(LocalStore(work / "store"), cache_dir=work / "cache")
    client.create_repo("db")
    bare_dir = work / "pg" / "bare-dump"  # inside the folder the server user owns
    bare_dir.mkdir()
    subprocess.run(["chown", "postgres", str(bare_dir)], check=True)
    bare_file = bare_dir / "postgres.dump"
    # The same pg_dump the sidecar runs (custom format, no compression), writing a local file.
    bare_dump = _timed(
        lambda: server._run(
            [str(server.bin / "pg_dump"), *server._conn(), "-Fc", "-Z0", "-f", str(bare_file), "postgres"]
        )
    )
    holder: dict[str, object] = {}

    def dump_and_upload() -> None:
        holder["first"] = upload_dump(server, client, work / "dump1", "db", "v1", "latest")

    sidecar_dump = _timed(dump_and_upload)
    first = holder["first"]
    assert isinstance(first, UploadResult)
    # 1% of the rows change, then the same dump-and-upload again: once as a contiguous batch (a
    # day's records corrected), once scattered evenly (every 100th row), which touches every
    # ~14 KB of the dump and so every 1 MiB chunk: shown so the limit of chunk-level dedup is plain.
    subprocess.run([*psql, "-c", f"UPDATE t SET b = b + 1 WHERE id <= {rows_wanted // 100}"], check=True)
    second = upload_dump(server, client, work / "dump2", "db", "v2", "latest")
    subprocess.run([*psql, "-c", "UPDATE t SET b = b + 1 WHERE id % 100 = 0"], check=True)
    third = upload_dump(server, client, work / "dump3", "db", "v3", "latest")
    server.stop()
    # Restores, each into a fresh cluster.
    bare_target = Server(DatabaseSpec("bare", _port()), work / "pg-bare")
    bare_target.start()
    subprocess.run(["chown", "-R", "postgres", str(bare_dir)], check=True)
    bare_restore = _timed(
        lambda: bare_target._run(
            [
                str(bare_target.bin / "pg_restore"),
                *bare_target._conn(),
                "-j",
                "2",
                "--no-owner",
                "-d",
                "postgres",
                str(bare_file),
            ]
        )
    )
    bare_target.stop()
    target = Server(DatabaseSpec("side", _port()), work / "pg-side")
    target.start()

    def download_and_restore() -> None:
        staged = work / "restore"
        client.download(client.resolve("db", label="latest"), staged)
        target.restore(staged, ignore_version=False)

    sidecar_restore = _timed(download_and_restore)
    target.stop()
    first_bytes = first.stats.bytes_stored
    second_bytes = second.stats.bytes_stored
    size_note = f"{db_size / 2**20:.0f} MiB database"
    return [
        Row(
            f"postgres dump + upload, {size_note} (s)",
            sidecar_dump,
            "bare pg_dump -Fc -Z0 to a local file",
            bare_dump,
            f"{sidecar_dump / bare_dump:.2f}x",
            "<= 1.5x",
            sidecar_dump / bare_dump <= 1.5,
        ),
        Row(
            f"postgres download + restore, {size_note} (s)",
            sidecar_restore,
            "bare pg_restore from disk",
            bare_restore,
            f"{sidecar_restore / bare_restore:.2f}x",
            "<= 1.5x",
            sidecar_restore / bare_restore <= 1.5,
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
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datarun-bench-sidecar-"))
    work.chmod(0o755)
    try:
        rows = [fuse_overhead(work / "fuse"), *postgres_rows(work / "pg", 64 if args.small else 1024)]
    finally:
        for mnt in work.rglob("*mnt"):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
    print("| scenario | datarun | baseline | baseline value | figure | bar | pass |")
    print("|---|---:|---|---:|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.datarun:.2f} | {r.baseline} | {r.baseline_value:.2f} | {r.figure} | {r.bar} | "
            f"{'yes' if r.passed else 'NO'} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
