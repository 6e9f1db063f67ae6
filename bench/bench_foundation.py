"""Foundation benchmark: datarun against DVC and plain cp on the same data, in one run.

    .venv/bin/python bench/bench_foundation.py            # full: 5,000 small files + 2 x 256 MiB
    .venv/bin/python bench/bench_foundation.py --small    # quick smoke run

Every peer runs on the same machine, the same folder and a warm page cache (no peer gets a
cold one), one after another. Ratios are what to read: absolute seconds move with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DVC_VENV = ROOT / ".cache" / "bench" / "dvc-venv"


@dataclass
class Row:
    scenario: str
    datarun: float
    peer: str
    peer_value: float
    ratio: float  # peer / datarun: how many times faster datarun is (or the stated figure)
    bar: str
    passed: bool


def sh(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, str]:
    # The previous step's dirty pages are written back first, so that no step pays for another's
    # writeback (DVC does not fsync, and its gigabyte would otherwise land in datarun's timing).
    os.sync()
    start = time.perf_counter()
    out = sh(cmd, cwd, env)
    return time.perf_counter() - start, out


def make_dataset(folder: Path, small: bool) -> None:
    rng = random.Random(20261122)
    files, big, big_size = (500, 2, 16 << 20) if small else (5000, 2, 256 << 20)
    for i in range(files):
        sub = folder / f"dir{i % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(1 << 10, 32 << 10)))
    for i in range(big):
        with (folder / f"big{i}.bin").open("wb") as out:
            for _ in range(big_size // (8 << 20)):
                out.write(os.urandom(8 << 20))
    # Old mtimes: the hash cache (rightly) distrusts files modified in the last seconds.
    past = time.time() - 3600
    for path in folder.rglob("*"):
        os.utime(path, (past, past))


def ensure_dvc() -> Path:
    dvc = DVC_VENV / "bin" / "dvc"
    if not dvc.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc>=3,<4"], check=True)
    return dvc


def dvc_project(project: Path, remote: Path) -> tuple[str, dict[str, str]]:
    """A git + DVC project at ``project`` with a local remote: DVC's command and environment."""
    dvc = str(ensure_dvc())
    dvc_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    sh(["git", "init", "-q"], project)
    sh([dvc, "init", "-q"], project, dvc_env)
    sh([dvc, "config", "core.analytics", "false"], project, dvc_env)
    sh([dvc, "config", "core.autostage", "false"], project, dvc_env)
    sh([dvc, "remote", "add", "-d", "local", str(remote)], project, dvc_env)
    return dvc, dvc_env


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of a child, read from GNU time (the `time` package), in MB."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, capture_output=True, text=True, check=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def one_run(work: Path, args: argparse.Namespace) -> tuple[list[Row], str]:
    """One full round in ``work``: every step of it, nothing deleted (see ``main``)."""
    load_before = os.getloadavg()
    project = work / "dvcproj"
    data = project / "data"
    data.mkdir(parents=True)
    print(f"# dataset in {data}", file=sys.stderr)
    make_dataset(data, args.small)
    total = tree_size(data)

    env = {
        **os.environ,
        "DATARUN_CACHE_DIR": str(work / "dr-cache"),
        "DATARUN_CONFIG": str(work / "none.yaml"),
        "DATARUN_HOME": str(work / "dr-home"),
    }
    # Compile datarun's bytecode first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set
    # (as in this dev shell) every CLI call would otherwise recompile ~80 modules, about 0.6 s
    # of CPU that a real install never pays and that swamps the unchanged re-upload.
    python = str(Path(args.datarun).parent / "python")
    sh(
        [
            python,
            "-c",
            "import compileall, os, datarun; compileall.compile_dir(os.path.dirname(datarun.__file__), quiet=1)",
        ],
        env=env,
    )
    store = f"file://{work / 'dr-store'}"
    dr = [args.datarun, "-q", "--store", store]
    sh([*dr, "repo", "create", "--repo", "bench"], env=env)

    rows: list[Row] = []
    # -- cp, the floor ------------------------------------------------------------------
    cp_up, _ = timed(["sh", "-c", f"cp -r '{data}' '{work / 'cp-copy'}' && sync"])
    # -- datarun first upload ----------------------------------------------------------------
    dr_up, out = timed([*dr, "bundle", "upload", "--path", str(data), "--message", "m", "--repo", "bench"], env=env)
    bundle = out.strip().splitlines()[-1]
    packs = work / "dr-store" / "packs"
    stored_after_first = tree_size(packs)
    # -- re-upload unchanged -------------------------------------------------------------------
    dr_re, _ = timed([*dr, "bundle", "upload", "--path", str(data), "--message", "again", "--repo", "bench"], env=env)
    new_bytes = tree_size(packs) - stored_after_first
    reupload = Row(
        "re-upload unchanged (s)",
        dr_re,
        "datarun first upload",
        dr_up,
        dr_up / dr_re,
        "< 0.25 s and >= 10x faster, 0 new chunk bytes",
        dr_re < 0.25 and dr_up / dr_re >= 10 and new_bytes == 0,
    )
    # -- downloads, datarun's and cp's before any DVC step: `dvc add` deletes the 5,000 files it
    # replaces by links or copies, and every create after it pays for them (see `main`).
    cold = work / "dr-download-cold"
    dr_cold, _ = timed(
        [*dr, "bundle", "download", "--repo", "bench", "--bundle", bundle, "--destination", str(cold)], env=env
    )
    # datarun writes local packs around the page cache, so they were cold above; DVC's remote
    # went through the page cache and is warm for its pull. Read the packs once so that both
    # downloads start from a warm source, as every step here does.
    for pack in (work / "dr-store" / "packs").rglob("*"):
        if pack.is_file():
            with pack.open("rb") as handle:
                while handle.read(8 << 20):
                    pass
    dest = work / "dr-download"
    dr_down, _ = timed(
        [*dr, "bundle", "download", "--repo", "bench", "--bundle", bundle, "--destination", str(dest)], env=env
    )
    cp_down, _ = timed(["cp", "-r", str(work / "cp-copy"), str(work / "cp-back")])
    # -- dvc add + push, then pull into an empty cache and workspace --------------------------
    dvc, dvc_env = dvc_project(project, work / "dvc-remote")
    dvc_add, _ = timed([dvc, "add", "-q", "data"], project, dvc_env)
    dvc_push, _ = timed([dvc, "push", "-q"], project, dvc_env)
    dvc_version = sh([dvc, "--version"], project, dvc_env).strip()
    # Moved aside, not deleted: see `main` on what deleting does to the next creates.
    os.rename(project / ".dvc" / "cache", work / "dvc-cache-before-pull")
    os.rename(data, work / "data-before-pull")
    dvc_pull, _ = timed([dvc, "pull", "-q"], project, dvc_env)
    rows.append(
        Row(
            "first upload (s)",
            dr_up,
            f"dvc add+push ({dvc_add:.2f}+{dvc_push:.2f})",
            dvc_add + dvc_push,
            (dvc_add + dvc_push) / dr_up,
            ">= 3x faster",
            (dvc_add + dvc_push) / dr_up >= 3,
        )
    )
    rows.append(Row("first upload (s)", dr_up, "cp -r + sync", cp_up, cp_up / dr_up, "reference", True))
    rows.append(
        Row(
            "download, empty target (s)",
            dr_down,
            "dvc pull, empty cache",
            dvc_pull,
            dvc_pull / dr_down,
            ">= 8x faster",
            dvc_pull / dr_down >= 8,
        )
    )
    rows.append(Row("download, empty target (s)", dr_down, "cp -r", cp_down, cp_down / dr_down, "reference", True))
    rows.append(
        Row("download, store packs cold (s)", dr_cold, "dvc pull, empty cache", dvc_pull, dvc_pull / dr_cold, "-", True)
    )
    original = work / "data-before-pull"
    same = all(sh(["diff", "-r", "-q", str(d), str(o)]) == "" for d in (dest, cold) for o in (data, original))
    rows.append(reupload)
    # -- memory ------------------------------------------------------------------------------
    one = work / "one-gib"
    one.mkdir()
    with (one / "big.bin").open("wb") as out_file:
        for _ in range((64 if args.small else 1024) // 8):
            out_file.write(os.urandom(8 << 20))
    rss = peak_rss_mb([*dr, "bundle", "upload", "--path", str(one), "--message", "m", "--repo", "bench"], env)
    rows.append(
        Row(
            f"peak RSS uploading {'64 MiB' if args.small else '1 GiB'} (MB)",
            rss,
            "bar",
            300,
            300 / rss,
            "< 300 MB",
            rss < 300,
        )
    )

    summary = (
        f"dataset: {total / 2**20:.0f} MiB in {sum(1 for _ in data.rglob('*') if _.is_file())} files; "
        f"{dvc_version and 'dvc ' + dvc_version}; downloads identical to source: {same}; "
        f"new chunk bytes on re-upload: {new_bytes}; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if not same:
        rows.append(Row("downloads identical to the source", 0, "diff -r", 1, 0, "identical", False))
    return rows, summary


def print_table(rows: list[Row]) -> None:
    print("| scenario | datarun | peer | peer value | ratio (peer/datarun) | bar | pass |")
    print("|---|---:|---|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.datarun:.2f} | {r.peer} | {r.peer_value:.2f} | {r.ratio:.1f}x | {r.bar} | "
            f"{'yes' if r.passed else 'NO'} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="500 files + 2 x 16 MiB, for a smoke run")
    parser.add_argument("--runs", type=int, default=3, help="rounds in this invocation (default 3); a bar counts all")
    parser.add_argument(
        "--settle", type=float, default=None, help="seconds to wait after a sync before the first round (default 361)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--datarun", default=str(ROOT / ".venv" / "bin" / "datarun"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a bar is missed in any run")
    args = parser.parse_args()

    # Nothing is deleted until every round is done. This machine's root filesystem is ext4
    # without a journal, and there every file create scans past the inodes freed in the last
    # 60 s (360 s while their inode-table blocks are dirty): recently_deleted() in
    # fs/ext4/ialloc.c. After an `rm -rf` of a previous round's 30,000 files, perf put 57% of a
    # download's samples there, and `cp -r` of the same tree took 2.9-3.4 s, against 1.5-1.6 s without.
    # Deleting between steps would time that backlog, not the tools, and whichever tool came
    # right after a delete (dvc pull, after its cache was removed) would pay it.
    # For the same reason each round waits six minutes after a `sync`: the inodes freed
    # before (an earlier invocation's clean-up, a test run) are then older than the 360 s the
    # allocator skips while their table blocks are dirty, as every create in a block makes them.
    # With 61 s a round right after another invocation still spent 31% of a download's samples
    # there. Nothing else may delete files meanwhile.
    settle = args.settle if args.settle is not None else (0 if args.small else 361)
    if settle:
        print(f"# sync, then {settle:.0f} s for the inodes freed before this run to age out", file=sys.stderr)
        os.sync()
        time.sleep(settle)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="datarun-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rounds: list[list[Row]] = []
    try:
        for n in range(args.runs):
            if n and settle:
                # The previous round's DVC steps deleted files: let those age out too.
                print(f"# sync, then {settle:.0f} s before round {n + 1}", file=sys.stderr)
                os.sync()
                time.sleep(settle)
            rows, summary = one_run(root / f"run{n + 1}", args)
            rounds.append(rows)
            print(f"\n## run {n + 1} of {args.runs}\n\n{summary}\n")
            print_table(rows)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if len(rounds) > 1:
        print(f"\n## ranges over the {len(rounds)} runs (a bar holds only if it held in every run)\n")
        print("| scenario | peer | datarun | peer value | ratio | bar | every run |")
        print("|---|---|---:|---:|---:|---|---|")
        for i, first in enumerate(rounds[0]):
            same = [r[i] for r in rounds]

            def span(values: list[float], unit: str = "") -> str:
                return f"{min(values):.2f}-{max(values):.2f}{unit}"

            print(
                f"| {first.scenario} | {first.peer.split(' (')[0]} | {span([r.datarun for r in same])} | "
                f"{span([r.peer_value for r in same])} | "
                f"{min(r.ratio for r in same):.1f}-{max(r.ratio for r in same):.1f}x | "
                f"{first.bar} | {'yes' if all(r.passed for r in same) else 'NO'} |"
            )
    if args.json:
        args.json.write_text(json.dumps([[asdict(r) for r in rows] for rows in rounds], indent=2))
    return 1 if args.strict and not all(r.passed for rows in rounds for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
