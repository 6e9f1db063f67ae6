"""`datarun bundle mount`: a read-only FUSE view of a bundle, streamed by default."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import click

from datarun import config as cfg
from datarun.cli.common import info, state, with_store
from datarun.cli.lineage_cmd import allow_invalid_option, refuse_invalid
from datarun.errors import LocalIOError, UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`512M`, `4G`, `1.5GiB`, `1000` (bytes)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"size `{text}` not understood; use e.g. 512M, 4G or a number of bytes")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def _daemonize(argv: list[str], ready_file: Path | None, timeout: float) -> None:
    """Re-run ourselves detached and return once the mount is ready (or report why not)."""
    marker = ready_file or Path(tempfile.mkdtemp(prefix="datarun-mount-")) / "ready"
    args = [a for a in argv if a != "--daemonize"]
    if ready_file is None:
        args += ["--ready-file", str(marker)]
    # A mount killed with SIGKILL leaves its ready file behind; it must not pass for ours.
    marker.unlink(missing_ok=True)
    log_path = cfg.cache_dir() / "mount-logs" / f"mount-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        import subprocess  # only `mount --background` spawns a child; kept off every CLI start

        child = subprocess.Popen(
            [sys.executable, "-m", "datarun.cli.main", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            info(f"mounted in the background (pid {child.pid}); log: {log_path}")
            click.echo(child.pid)
            return
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise LocalIOError(f"background mount exited with {child.returncode}: {' / '.join(tail)}")
        time.sleep(0.05)
    child.terminate()
    raise LocalIOError(f"background mount not ready after {timeout:.0f}s; see {log_path}")


@click.command("mount")
@click.option("--repo", required=True, help="Repo name.")
@click.option("--bundle", "bundle_id", default=None, help="Select the bundle by id.")
@click.option("--label", default=None, help="Select the bundle by label.")
@click.option("--mount", "mountpoint", required=True, type=click.Path(), help="Empty folder to mount on.")
@click.option(
    "--stream/--no-stream",
    default=True,
    show_default=True,
    help="Fetch chunks lazily, or download the whole bundle first and serve it from disk.",
)
@click.option(
    "--cache-dir",
    type=click.Path(),
    default=None,
    help="Chunk cache, inode tables and staging (default: the datarun cache dir).",
)
@click.option("--cache-size", default="4G", show_default=True, help="On-disk chunk cache budget.")
@click.option("--memory-cache-size", default="256M", show_default=True, help="In-memory chunk cache budget.")
@click.option(
    "--prefetch",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Chunks to read ahead of a sequential reader.",
)
@click.option("--daemonize", is_flag=True, help="Return once mounted and keep serving in the background.")
@click.option(
    "--ready-file",
    type=click.Path(),
    default=None,
    help="Write this file (JSON) once the mount answers; removed at unmount.",
)
@click.option("--allow-other", is_flag=True, help="Let other users read (needs user_allow_other in /etc/fuse.conf).")
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="With --daemonize: seconds to wait for the mount to be ready.",
)
@allow_invalid_option
@with_store
def mount(
    repo: str,
    bundle_id: str | None,
    label: str | None,
    mountpoint: str,
    stream: bool,
    cache_dir: str | None,
    cache_size: str,
    memory_cache_size: str,
    prefetch: int,
    daemonize: bool,
    ready_file: str | None,
    allow_other: bool,
    timeout: float,
    allow_invalid: bool,
) -> None:
    """Mount a bundle read-only. Runs until SIGTERM/SIGINT or `fusermount3 -u MOUNT`."""
    if daemonize:
        # Refused here too: the background child's exit code would not reach the caller.
        refuse_invalid(repo, state().client().resolve(repo, bundle_id, label).id, allow_invalid)
        _daemonize(sys.argv[1:], Path(ready_file) if ready_file else None, timeout)
        return
    try:
        from datarun.mount.runner import MountOptions
    except ImportError as err:
        raise UsageError(f"mounting needs pyfuse3: pip install 'datarun[fuse]' ({err})") from None
    client = state().client()
    found = client.resolve(repo, bundle_id, label)
    refuse_invalid(repo, found.id, allow_invalid)
    options = MountOptions(
        stream=stream,
        cache_dir=Path(cache_dir) if cache_dir else None,
        disk_cache_bytes=parse_size(cache_size),
        memory_cache_bytes=parse_size(memory_cache_size),
        prefetch=prefetch,
        workers=max(state().workers, 4),
        ready_file=Path(ready_file) if ready_file else None,
        allow_other=allow_other,
        fuse_debug=state().debug,
    )
    info(f"mounting bundle {found.id} of `{repo}` at {mountpoint} ({found.file_count} files)")
    client.mount(found, Path(mountpoint), options)
    info(f"unmounted {mountpoint}")
