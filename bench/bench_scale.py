"""Scale benchmark: a tree of 1,000,000 small files, datarun against DVC, in one run.

    .venv/bin/python bench/bench_scale.py                   # 1,000,000 files of 1-4 KiB (about an hour)
    .venv/bin/python bench/bench_scale.py --files 20000     # a smoke run

Steps, each a fresh process timed by wall clock with its peak RSS (GNU time): datarun's first
upload, its unchanged re-upload and its download into an empty folder; then `dvc add` + `dvc
push`, the same again with nothing changed, and `dvc pull` into an empty cache and workspace.
The store and DVC's remote are local folders on the same disk. As in bench_foundation.py,
nothing is deleted until the end and the run waits after a `sync` before it starts and before
`dvc pull`: on this machine's journal-less ext4 every create pays for the inodes freed in the
last minutes (see bench/README.md), and `dvc add` frees a million.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_foundation import dvc_project, sh  # noqa: E402

PER_FOLDER = 1000


@dataclass(frozen=True)
class Step:
    seconds: float
    rss_mb: float


def measured(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[Step, str]:
    """Run ``cmd`` after a `sync` (no step pays for another's writeback); wall time and peak RSS."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return Step(seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024), proc.stdout


def make_tree(folder: Path, files: int) -> int:
    """``files`` files of 1-4 KiB of random bytes, 1,000 to a folder; returns the bytes written."""
    rng = random.Random(20261207)
    past = time.time() - 3600  # old mtimes: the hash cache (rightly) distrusts files modified seconds ago
    total = 0
    for i in range(files):
        if i % PER_FOLDER == 0:
            sub = folder / f"d{i // PER_FOLDER:04d}"
            sub.mkdir(parents=True)
        path = sub / f"f{i:07d}"
        body = rng.randbytes(rng.randint(1 << 10, 4 << 10))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        os.utime(path, (past, past))
        total += len(body)
    return total


def report(
    files: int, total: int, version: str, same: bool, load_before: tuple[float, float, float], steps: dict[str, Step]
) -> None:
    rows = [
        (
            "first upload",
            steps["up"],
            "dvc add + dvc push",
            Step(steps["add"].seconds + steps["push"].seconds, max(steps["add"].rss_mb, steps["push"].rss_mb)),
        ),
        (
            "unchanged re-upload",
            steps["reup"],
            "dvc add + dvc push, unchanged",
            Step(steps["readd"].seconds + steps["repush"].seconds, max(steps["readd"].rss_mb, steps["repush"].rss_mb)),
        ),
        ("download, empty target", steps["down"], "dvc pull, empty cache", steps["pull"]),
    ]
    print(
        f"\n{files} files, {total / 2**20:.0f} MiB; {version}; downloads identical to the source: {same}; "
        f"load average before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    print(
        f"dvc add {steps['add'].seconds:.1f} s + push {steps['push'].seconds:.1f} s; "
        f"unchanged: add {steps['readd'].seconds:.1f} s + push {steps['repush'].seconds:.1f} s\n"
    )
    print("| step | datarun (s) | peak RSS (MB) | peer | peer (s) | peer RSS (MB) | ratio | bar | pass |")
    print("|---|---:|---:|---|---:|---:|---:|---|---|")
    for name, ours, peer, theirs in rows:
        ratio = theirs.seconds / ours.seconds
        if name == "first upload":
            bar, ok = ">= 5x faster, RSS < 500 MB", ratio >= 5 and ours.rss_mb < 500
        else:
            bar, ok = "RSS < 500 MB", ours.rss_mb < 500
        print(
            f"| {name} | {ours.seconds:.1f} | {ours.rss_mb:.0f} | {peer} | {theirs.seconds:.1f} | "
            f"{theirs.rss_mb:.0f} | {ratio:.1f}x | {bar} | {'yes' if ok else 'NO'} |"
        )


def settle(seconds: float, why: str) -> None:
    if seconds:
        print(f"# sync, then {seconds:.0f} s: {why}", file=sys.stderr, flush=True)
        os.sync()
        time.sleep(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--settle", type=float, default=361.0, help="seconds to wait after a sync (default 361)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--datarun", default=str(ROOT / ".venv" / "bin" / "datarun"))
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="datarun-bench-scale-"))
    project = work / "dvcproj"
    data = project / "data"
    load_before = os.getloadavg()
    try:
        started = time.perf_counter()
        total = make_tree(data, args.files)
        print(
            f"# {args.files} files, {total / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s", file=sys.stderr
        )
        settle(args.settle, "inodes freed before this run age out")

        env = {
            **os.environ,
            "DATARUN_CACHE_DIR": str(work / "dr-cache"),
            "DATARUN_CONFIG": str(work / "none.yaml"),
            "DATARUN_HOME": str(work / "dr-home"),
        }
        dr = [args.datarun, "-q", "--store", f"file://{work / 'dr-store'}"]
        sh([*dr, "repo", "create", "--repo", "scale"], env=env)
        upload = [*dr, "bundle", "upload", "--path", str(data), "--message", "m", "--repo", "scale"]
        up, out = measured(upload, env=env)
        bundle = out.strip().splitlines()[-1]
        print(f"# datarun upload {up.seconds:.1f} s", file=sys.stderr, flush=True)
        reup, _ = measured(upload, env=env)
        dest = work / "dr-download"
        down, _ = measured(
            [*dr, "bundle", "download", "--repo", "scale", "--bundle", bundle, "--destination", str(dest)], env=env
        )
        print(f"# datarun download {down.seconds:.1f} s", file=sys.stderr, flush=True)

        dvc, dvc_env = dvc_project(project, work / "dvc-remote")
        add, _ = measured([dvc, "add", "-q", "data"], project, dvc_env)
        print(f"# dvc add {add.seconds:.1f} s", file=sys.stderr, flush=True)
        push, _ = measured([dvc, "push", "-q"], project, dvc_env)
        print(f"# dvc push {push.seconds:.1f} s", file=sys.stderr, flush=True)
        readd, _ = measured([dvc, "add", "-q", "data"], project, dvc_env)
        repush, _ = measured([dvc, "push", "-q"], project, dvc_env)
        version = sh([dvc, "--version"], project, dvc_env).strip()
        # Moved aside, not deleted (see the docstring).
        os.rename(project / ".dvc" / "cache", work / "dvc-cache-before-pull")
        os.rename(data, work / "data-before-pull")
        settle(args.settle, "the million inodes `dvc add` freed age out before `dvc pull` creates as many")
        pull, _ = measured([dvc, "pull", "-q"], project, dvc_env)
        same = all(
            subprocess.run(["diff", "-r", "-q", str(a), str(work / "data-before-pull")], capture_output=True).returncode
            == 0
            for a in (dest, data)
        )
        # Printed before the clean-up: deleting five million files takes longer than some steps.
        report(
            args.files,
            total,
            version,
            same,
            load_before,
            {
                "up": up,
                "reup": reup,
                "down": down,
                "add": add,
                "push": push,
                "readd": readd,
                "repush": repush,
                "pull": pull,
            },
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
