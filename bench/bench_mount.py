"""Mount benchmark: `datarun bundle mount` on a local store, against reading a downloaded copy.

    .venv/bin/python bench/bench_mount.py             # full: 256 MiB, 5,000 files, 1,000,000 files, 2 GiB
    .venv/bin/python bench/bench_mount.py --small     # quick smoke run
    .venv/bin/python bench/bench_mount.py --json out.json

(a) sequential read of a big random file from a fresh mount (cold chunk cache), `cat` to
    /dev/null, against `cat` of the same file after `datarun bundle download`. Twice: with the
    store's pack files (and the downloaded copy) in the page cache, and evicted from it with
    posix_fadvise(DONTNEED), which needs no privileges.
(b) time to first byte of one file of a 5,000-file bundle, from starting the mount process and
    from the moment the ready file appears (fresh DATARUN_CACHE_DIR every run: no cached table).
(c) a 1,000,000-file bundle (1000 folders x 1000 names for one real chunk, written straight into
    a manifest): seconds from process start to ready, and the mount process's peak RSS (VmHWM).
(d) reading one 10 MiB file of a 2 GiB bundle: bytes the mount pulled from the store, measured
    twice with the packs evicted first: pack pages resident afterwards (fincore/mincore) and the
    mount process's /proc/<pid>/io read_bytes.

Every mount is a `python -m datarun.cli.main ... bundle mount --ready-file` subprocess with its
own DATARUN_HOME/DATARUN_CONFIG/DATARUN_CACHE_DIR. Needs /dev/fuse, fusermount3 and pyfuse3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from datarun.ids import new_ksuid
from datarun.layout import manifest_key
from datarun.manifest import ManifestWriter
from datarun.model import DIRECTORY, FILE, Bundle, FileEntry
from datarun.repo import Client
from datarun.store import LocalStore

MiB = 1 << 20
GB = 1e9


@dataclass
class Row:
    scenario: str
    datarun: float
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None  # datarun / baseline
    bar: str
    passed: bool | None  # None: no bar, context only
    note: str = ""


# -- helpers ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            block = min(left, 8 * MiB)
            out.write(rng.randbytes(block))
            left -= block


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def evict(paths: list[Path]) -> None:
    """Drop these files' clean pages from the page cache (no privileges needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[Path]) -> None:
    for path in paths:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def resident_bytes(paths: list[Path]) -> int:
    """Bytes of these files now in the page cache, per util-linux `fincore`."""
    if not paths:
        return 0
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line) for line in out.split())


def pack_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "packs").rglob("*") if p.is_file())


def timed_cat(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def proc_io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def is_mounted(path: Path) -> bool:
    target = str(path.absolute())
    with open("/proc/self/mountinfo") as table:
        return any(line.split(" ")[4] == target for line in table)


class Bench:
    """One work folder, one store, mounts that are always unmounted at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = work / "store"
        self.client = Client(LocalStore(self.store), cache_dir=work / "client-cache")
        self._runs = 0
        self._mounts: list[tuple[Path, subprocess.Popen[bytes]]] = []

    @property
    def url(self) -> str:
        return f"file://{self.store}"

    def fresh(self, name: str) -> Path:
        self._runs += 1
        run = self.work / "runs" / f"{self._runs:03d}-{name}"
        for sub in ("mnt", "home", "cache"):
            (run / sub).mkdir(parents=True)
        return run

    def env(self, run: Path, cache: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATARUN_")}
        env["DATARUN_HOME"] = str(run / "home")
        env["DATARUN_CONFIG"] = str(run / "home" / "config.yaml")
        env["DATARUN_CACHE_DIR"] = str(cache or run / "cache")
        return env

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "datarun.cli.main", "-q", "--store", self.url, *args]

    def upload(self, repo: str, folder: Path) -> str:
        self.client.create_repo(repo)
        return self.client.upload(repo, folder, f"bench {repo}").bundle.id

    @contextmanager
    def mount(
        self, repo: str, bundle: str, name: str, cache: Path | None = None, timeout: float = 300
    ) -> Iterator[tuple[Path, subprocess.Popen[bytes], float, float]]:
        """Yields (mount point, process, started, ready) with perf_counter times."""
        run = self.fresh(name)
        mnt, ready = run / "mnt", run / "ready.json"
        argv = self.cli("bundle", "mount", "--repo", repo, "--bundle", bundle, "--mount", str(mnt))
        argv += ["--ready-file", str(ready)]
        with (run / "mount.log").open("wb") as sink:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, env=self.env(run, cache), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        self._mounts.append((mnt, proc))
        while not ready.exists():
            if proc.poll() is not None:
                raise SystemExit(f"mount exited with {proc.returncode}:\n{(run / 'mount.log').read_text()}")
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"mount not ready after {timeout:.0f}s:\n{(run / 'mount.log').read_text()}")
            time.sleep(0.001)
        ready_at = time.perf_counter()
        try:
            yield mnt, proc, started, ready_at
        finally:
            self.unmount(mnt, proc)

    def unmount(self, mnt: Path, proc: subprocess.Popen[bytes]) -> None:
        if is_mounted(mnt):
            done = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for mnt, proc in self._mounts:
            self.unmount(mnt, proc)
        self.client.close()


# -- (a) sequential read ------------------------------------------------------------------


def bench_sequential(bench: Bench, small: bool, repeats: int) -> list[Row]:
    size = (32 if small else 256) * MiB
    src = bench.work / "seq-src"
    write_random(src / "big.bin", size, 1)
    bundle = bench.upload("seq", src)
    want = sha256_file(src / "big.bin")
    shutil.rmtree(src)
    run = bench.fresh("download")
    dest = run / "download"
    subprocess.run(
        bench.cli("bundle", "download", "--repo", "seq", "--bundle", bundle, "--destination", str(dest)),
        env=bench.env(run),
        check=True,
    )
    copy = dest / "big.bin"
    assert sha256_file(copy) == want
    packs = pack_files(bench.store)
    rows = []
    for cold in (False, True):
        mount_times, cat_times = [], []
        for _ in range(repeats):
            (evict if cold else warm)([copy])
            cat_times.append(timed_cat(copy))
            (evict if cold else warm)(packs)
            with bench.mount("seq", bundle, "seq") as (mnt, _proc, _started, _ready):
                mount_times.append(timed_cat(mnt / "big.bin"))
                if len(mount_times) == 1:
                    assert sha256_file(mnt / "big.bin") == want, "the mount served other bytes"
        mount_rate = size / statistics.median(mount_times) / GB
        cat_rate = size / statistics.median(cat_times) / GB
        where = "evicted (fadvise DONTNEED)" if cold else "warm"
        rows.append(
            Row(
                f"(a) sequential read {size // MiB} MiB, fresh mount, store page cache {where}",
                mount_rate,
                "GB/s",
                f"`cat` of the downloaded copy, page cache {where}",
                cat_rate,
                mount_rate / cat_rate,
                ">= 1 GB/s",
                mount_rate >= 1.0,
                f"median of {repeats}; mount runs {', '.join(f'{t:.3f}' for t in mount_times)} s",
            )
        )
    return rows


# -- (b) time to first byte ---------------------------------------------------------------


def bench_first_byte(bench: Bench, small: bool, repeats: int) -> list[Row]:
    files = 500 if small else 5000
    rng = random.Random(2)
    src = bench.work / "ttfb-src"
    for i in range(files):
        path = src / f"dir{i % 50:02d}" / f"file{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1 << 10, 32 << 10)))
    target = f"dir{(files // 2) % 50:02d}/file{files // 2:05d}.bin"
    first = (src / target).read_bytes()[:1]
    bundle = bench.upload("ttfb", src)
    from_start, from_ready = [], []
    for _ in range(repeats):
        with bench.mount("ttfb", bundle, "ttfb") as (mnt, _proc, started, ready):
            with (mnt / target).open("rb", buffering=0) as handle:
                byte = handle.read(1)
            done = time.perf_counter()
            assert byte == first
            from_start.append(done - started)
            from_ready.append(done - ready)
    startup = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "datarun.cli.main", "--version"], capture_output=True, check=True)
        startup.append(time.perf_counter() - t0)
    start_ms = statistics.median(from_start) * 1000
    ready_ms = statistics.median(from_ready) * 1000
    startup_ms = statistics.median(startup) * 1000
    return [
        Row(
            f"(b) first byte of 1 file in a {files:,}-file bundle, from process start",
            start_ms,
            "ms",
            "`datarun --version` (interpreter + CLI start-up)",
            startup_ms,
            start_ms / startup_ms,
            "< 200 ms",
            start_ms < 200,
            f"median of {repeats}: {', '.join(f'{t * 1000:.0f}' for t in from_start)} ms; cold inode table",
        ),
        Row(
            f"(b) first byte of 1 file in a {files:,}-file bundle, from ready file",
            ready_ms,
            "ms",
            "",
            None,
            None,
            "< 200 ms",
            ready_ms < 200,
            f"median of {repeats}: {', '.join(f'{t * 1000:.1f}' for t in from_ready)} ms",
        ),
    ]


# -- (c) a million files ------------------------------------------------------------------


def million_bundle(bench: Bench, dirs: int, per_dir: int) -> str:
    src = bench.work / "million-src"
    src.mkdir()
    (src / "seed.txt").write_bytes(b"one chunk, a million names\n")
    bench.client.create_repo("million")
    seed = bench.client.upload("million", src, "seed chunk").bundle
    (ref,) = (e.chunks[0] for e in bench.client.list_files(seed) if e.kind == FILE)
    writer = ManifestWriter(bench.work / "spool")
    for d in range(dirs):
        writer.add(FileEntry(f"d{d:04d}", DIRECTORY, 0, 0o755, 0))
        for f in range(per_dir):
            writer.add(FileEntry(f"d{d:04d}/f{f:04d}.txt", FILE, ref.size, 0o644, 0, (ref,)))
    manifest_id = writer.finish()
    bench.client.meta.put(manifest_key(manifest_id), writer.path)
    writer.path.unlink()
    bundle = Bundle(
        id=new_ksuid(),
        repo="million",
        message="names",
        created=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        manifest=manifest_id,
        file_count=writer.file_count,
        total_size=writer.total_size,
    )
    bench.client.meta.put_if_absent(
        f"repos/million/bundles/{bundle.id}.json",
        orjson.dumps(bundle.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
    )
    return bundle.id


def bench_million(bench: Bench, small: bool) -> list[Row]:
    dirs, per_dir = (20, 1000) if small else (1000, 1000)
    files = dirs * per_dir
    t0 = time.perf_counter()
    bundle = million_bundle(bench, dirs, per_dir)
    log(f"{files:,}-entry manifest written in {time.perf_counter() - t0:.1f}s")
    cache = bench.work / "million-cache"
    with bench.mount("million", bundle, "million", cache=cache) as (mnt, proc, started, ready):
        seconds = ready - started
        rss_ready = vm_hwm(proc.pid)
        t0 = time.perf_counter()
        count = 0
        for sub in os.scandir(mnt):
            with os.scandir(sub.path) as entries:
                count += sum(1 for _ in entries)
        scan = time.perf_counter() - t0
        assert count == files, count
        rss_scan = vm_hwm(proc.pid)
    with bench.mount("million", bundle, "million-again", cache=cache) as (_mnt, _proc, started, ready):
        again = ready - started
    return [
        Row(
            f"(c) mount {files:,}-file bundle: process start to ready",
            seconds,
            "s",
            "remount, inode table cached",
            again,
            seconds / again,
            "< 30 s",
            seconds < 30,
            f"listing all {files:,} entries afterwards took {scan:.1f}s",
        ),
        Row(
            f"(c) mount {files:,}-file bundle: peak RSS (VmHWM) at ready",
            rss_ready / MiB,
            "MiB",
            "VmHWM after listing every entry",
            rss_scan / MiB,
            rss_ready / rss_scan,
            "< 300 MB",
            rss_ready < 300e6 and rss_scan < 300e6,
            "bar applied to both figures; VmHWM includes the mapped SQLite pages",
        ),
    ]


# -- (d) bytes fetched --------------------------------------------------------------------


def bench_fetched(bench: Bench, small: bool) -> list[Row]:
    file_size = 10 * MiB
    files = 25 if small else 205
    src = bench.work / "fetch-src"
    for i in range(files):
        write_random(src / f"f{i:04d}.bin", file_size, 1000 + i)
    target = f"f{files // 2:04d}.bin"
    want = sha256_file(src / target)
    log(f"uploading {files * file_size / (1 << 30):.2f} GiB")
    bundle = bench.upload("fetch", src)
    shutil.rmtree(src)
    fetch = bench.client.get_bundle("fetch", bundle)
    used = {r.pack for e in bench.client.list_files(fetch) if e.kind == FILE for r in e.chunks}
    packs = [p for p in pack_files(bench.store) if p.name in used]
    evict(packs)
    with bench.mount("fetch", bundle, "fetch") as (mnt, proc, _started, _ready):
        before_io = proc_io(proc.pid)
        before_res = resident_bytes(packs)
        got = sha256_file(mnt / target)
        after_io = proc_io(proc.pid)
        after_res = resident_bytes(packs)
    assert got == want, "the mount served other bytes"
    paged_in = after_res - before_res
    read_bytes = after_io["read_bytes"] - before_io["read_bytes"]
    total = files * file_size
    return [
        Row(
            f"(d) 1 file of {file_size // MiB} MiB from a {total / (1 << 30):.1f} GiB bundle: pack bytes paged in",
            paged_in / MiB,
            "MiB",
            "file size",
            file_size / MiB,
            paged_in / file_size,
            "< 2x file size",
            paged_in < 2 * file_size,
            f"packs evicted first; fincore residency {before_res / MiB:.1f} -> {after_res / MiB:.1f} MiB",
        ),
        Row(
            f"(d) 1 file of {file_size // MiB} MiB from a {total / (1 << 30):.1f} GiB bundle: mount read_bytes",
            read_bytes / MiB,
            "MiB",
            "file size",
            file_size / MiB,
            read_bytes / file_size,
            "< 2x file size",
            read_bytes < 2 * file_size,
            f"/proc/<pid>/io of the mount process; rchar +{(after_io['rchar'] - before_io['rchar']) / MiB:.1f} MiB",
        ),
    ]


# -- main ---------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | datarun | baseline | ratio (datarun/baseline) | bar | pass |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = f"{r.baseline}: {fmt(r.baseline_value)} {r.unit}" if r.baseline else "-"
        verdict = "-" if r.passed is None else ("yes" if r.passed else "**no**")
        lines.append(f"| {r.scenario} | {fmt(r.datarun)} {r.unit} | {base} | {fmt(r.ratio)} | {r.bar} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="32 MiB, 500 files, 20,000 names, 250 MiB bundle")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is reported")
    parser.add_argument("--only", default="abcd", help="which benchmarks to run, e.g. `ab`")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a bar is missed")
    args = parser.parse_args()
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or shutil.which("fincore") is None:
        raise SystemExit("needs /dev/fuse, fusermount3 and fincore: apt-get install fuse3 util-linux")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="datarun-bench-mount-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}")
    bench = Bench(work)
    rows: list[Row] = []
    try:
        steps = {
            "a": lambda: bench_sequential(bench, args.small, args.repeats),
            "b": lambda: bench_first_byte(bench, args.small, max(args.repeats, 5)),
            "c": lambda: bench_million(bench, args.small),
            "d": lambda: bench_fetched(bench, args.small),
        }
        for key in args.only:
            log(f"running ({key})")
            rows += steps[key]()
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"datarun bundle mount, local store, {os.cpu_count()} CPUs, {'small' if args.small else 'full'} run\n")
    print(table(rows))
    notes = [f"- {r.scenario}: {r.note}" for r in rows if r.note]
    if notes:
        print("\n" + "\n".join(notes))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    missed = [r for r in rows if r.passed is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
