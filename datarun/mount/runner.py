"""Mount lifecycle: build the inode table, mount, signal readiness, unmount cleanly.

Readiness is two things a sidecar can wait on without polling ``mount`` output: the mount
point answers a ``stat``, and then a ready file is written atomically (JSON with the bundle
id, mount point and pid). SIGTERM/SIGINT and ``fusermount3 -u`` all end in the same clean
unmount; the ready file is removed on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyfuse3
import trio

from datarun.errors import LocalIOError, UsageError
from datarun.model import Bundle
from datarun.mount.chunks import ChunkSource
from datarun.mount.inodes import InodeTable
from datarun.mount.ops import BundleOperations
from datarun.store import ObjectStore

log = logging.getLogger("datarun.mount")


@dataclass(frozen=True)
class MountOptions:
    """How a bundle is served. Sizes are bytes."""

    stream: bool = True  # fetch lazily; False downloads everything first into the cache
    cache_dir: Path | None = None  # inode tables, disk chunk cache, staged downloads
    disk_cache_bytes: int = 4 << 30  # byte budget of the on-disk chunk cache (LRU)
    memory_cache_bytes: int = 256 << 20  # byte budget of the in-memory chunk cache (LRU)
    prefetch: int = 8  # chunks read ahead of a sequential reader
    workers: int = 8  # parallel chunk fetches
    ready_file: Path | None = None  # written once the mount answers
    allow_other: bool = False  # let other users read (needs user_allow_other in /etc/fuse.conf)
    fuse_debug: bool = False


def inode_table_for(bundle: Bundle, entries: Callable[[], Iterator[dict[str, Any]]], cache_dir: Path) -> InodeTable:
    """The bundle's inode table, reused from the cache when this manifest was mounted before."""
    path = cache_dir / "inodes" / f"{bundle.manifest}.sqlite"
    cached = InodeTable.open_cached(path)
    if cached is not None:
        return cached
    return InodeTable.build(entries(), path)


def _check_mountpoint(mountpoint: Path) -> None:
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LocalIOError(f"cannot create mount point `{mountpoint}`: {err.strerror}") from None
    if not mountpoint.is_dir():
        raise LocalIOError(f"mount point `{mountpoint}` is not a folder")
    if os.path.ismount(mountpoint):
        raise UsageError(f"`{mountpoint}` is already a mount point; unmount it with `fusermount3 -u {mountpoint}`")
    if any(mountpoint.iterdir()):
        raise UsageError(f"mount point `{mountpoint}` is not empty; pick an empty folder")


def _write_ready(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(payload))
    tmp.replace(path)


def _raise_readahead(mountpoint: Path, kib: int) -> None:
    """Ask the kernel for bigger read-ahead on this mount (best effort: needs root).

    FUSE mounts default to 128 KiB, so a sequential reader costs one request per 128 KiB; at
    1 MiB the per-request overhead of the Python server drops eightfold.
    """
    st = os.stat(mountpoint)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        if int(bdi.read_text()) < kib:
            bdi.write_text(str(kib))
    except (OSError, ValueError) as err:
        log.debug("cannot raise read-ahead on %s: %s", mountpoint, err)


async def _serve(mountpoint: Path, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %s: unmounting", signum)
                    pyfuse3.terminate()
                    return

        async def announce() -> None:
            # The kernel routes this stat to us, so it returns only once we are serving.
            await trio.to_thread.run_sync(os.stat, mountpoint)
            await trio.to_thread.run_sync(_raise_readahead, mountpoint, 1024)
            on_ready()

        nursery.start_soon(watch_signals)
        nursery.start_soon(announce)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def mount_bundle(
    blobs: ObjectStore,
    bundle: Bundle,
    table: InodeTable,
    mountpoint: Path,
    options: MountOptions,
    staged: Path | None = None,
    on_ready: Callable[[], None] | None = None,
) -> ChunkSource | None:
    """Serve ``bundle`` at ``mountpoint`` until unmounted or signalled. Blocks."""
    mountpoint = mountpoint.absolute()
    _check_mountpoint(mountpoint)
    source = None
    if staged is None:
        # ChunkSource leaves the disk tier out for a store that is a folder here.
        disk = options.cache_dir / "chunks" if options.cache_dir is not None else None
        source = ChunkSource(blobs, disk, options.memory_cache_bytes, options.disk_cache_bytes, options.workers)
    ops = BundleOperations(table, source, staged, options.prefetch)
    fuse_options = set(pyfuse3.default_options)
    fuse_options |= {"fsname=datarun", "subtype=datarun", "ro"}
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.fuse_debug:
        fuse_options.add("debug")

    def ready() -> None:
        if options.ready_file is not None:
            _write_ready(
                options.ready_file,
                {"bundle": bundle.id, "repo": bundle.repo, "mount": str(mountpoint), "pid": os.getpid()},
            )
        if on_ready is not None:
            on_ready()

    pyfuse3.init(ops, str(mountpoint), fuse_options)
    try:
        trio.run(_serve, mountpoint, ready)
    finally:
        pyfuse3.close(unmount=True)
        if options.ready_file is not None:
            options.ready_file.unlink(missing_ok=True)
        if source is not None:
            source.close()
        table.close()
    return source
