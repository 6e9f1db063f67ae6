"""A 1,000,000-file bundle mounts in bounded time and memory.

The bundle is made without a million real files: one tiny real chunk, referenced by 1000
folders x 1000 file entries written straight into a manifest, and a bundle record written
the way `Client.upload` writes one.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from datarun.ids import new_ksuid
from datarun.layout import manifest_key
from datarun.manifest import ManifestWriter
from datarun.model import DIRECTORY, FILE, Bundle, ChunkRef, FileEntry
from datarun.repo import Client
from datarun.store import LocalStore
from tests.mount import fuse_harness
from tests.mount.fuse_harness import Mounter

# Fixtures shared with the other mount modules (this folder has no conftest.py of ours).
mounter = fuse_harness.mounter

DIRS = 1000
FILES_PER_DIR = 1000
# The 30 s bar is measured by bench/bench_mount.py; here the limit only catches a hang or a
# regression by a large factor, so a busy CI machine does not fail the suite.
READY_LIMIT = 120.0
RSS_BAR = 300 << 20
PAYLOAD = b"one chunk, a million names\n"
MTIME_NS = 1_700_000_000_123_456_789


def make_million_bundle(root: Path) -> tuple[Path, str, str]:
    """(store folder, repo, bundle id) of a DIRS x FILES_PER_DIR bundle sharing one chunk."""
    src = root / "tiny"
    src.mkdir(parents=True)
    (src / "seed.txt").write_bytes(PAYLOAD)
    store = root / "store"
    with Client(LocalStore(store), cache_dir=root / "client-cache") as client:
        client.create_repo("million")
        seed = client.upload("million", src, "seed chunk").bundle
        (ref,) = (e.chunks[0] for e in client.list_files(seed) if e.kind == FILE)
        assert ref.size == len(PAYLOAD)
        manifest_id, writer = write_manifest(root / "spool", ref)
        client.meta.put(manifest_key(manifest_id), writer.path)
        writer.path.unlink()
        bundle = Bundle(
            id=new_ksuid(),
            repo="million",
            message="1,000,000 names for one chunk",
            created=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            manifest=manifest_id,
            file_count=writer.file_count,
            total_size=writer.total_size,
        )
        client.meta.put_if_absent(
            f"repos/million/bundles/{bundle.id}.json",
            orjson.dumps(bundle.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        )
        assert client.get_bundle("million", bundle.id).file_count == DIRS * FILES_PER_DIR
    return store, "million", bundle.id


def write_manifest(spool: Path, ref: ChunkRef) -> tuple[str, ManifestWriter]:
    writer = ManifestWriter(spool)
    chunks = (ref,)
    for d in range(DIRS):
        folder = f"d{d:04d}"
        writer.add(FileEntry(folder, DIRECTORY, 0, 0o755, MTIME_NS))
        for f in range(FILES_PER_DIR):
            writer.add(FileEntry(f"{folder}/f{f:04d}.txt", FILE, ref.size, 0o644, MTIME_NS, chunks))
    return writer.finish(), writer


@pytest.mark.slow
def test_a_million_file_bundle_mounts_fast_and_small(mounter: Mounter, tmp_path: Path) -> None:
    store, repo, bundle_id = make_million_bundle(tmp_path)
    mounted = mounter(f"file://{store}", repo, bundle_id, timeout=180)
    ready_seconds = mounted.seconds_to_ready
    root = mounted.path

    top = sorted(os.listdir(root))
    assert len(top) == DIRS and top[0] == "d0000" and top[-1] == f"d{DIRS - 1:04d}"
    expected = [f"f{f:04d}.txt" for f in range(FILES_PER_DIR)]
    for folder in ("d0000", "d0500", f"d{DIRS - 1:04d}"):
        assert sorted(os.listdir(root / folder)) == expected, folder
    last = root / f"d{DIRS - 1:04d}" / f"f{FILES_PER_DIR - 1:04d}.txt"
    st = last.stat()
    assert (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns) == (len(PAYLOAD), 0o644, MTIME_NS)
    assert last.read_bytes() == PAYLOAD
    assert (root / "d0123" / "f0456.txt").read_bytes() == PAYLOAD

    started = time.monotonic()
    total = 0
    for subdir in os.scandir(root):
        assert subdir.is_dir(follow_symlinks=False)
        with os.scandir(subdir.path) as entries:
            total += sum(1 for _ in entries)
    scan_seconds = time.monotonic() - started
    assert total == DIRS * FILES_PER_DIR

    peak = mounted.vm_hwm_bytes()
    print(
        f"1M-file mount: ready in {ready_seconds:.1f}s, scandir of all in {scan_seconds:.1f}s, VmHWM {peak >> 20} MiB"
    )
    assert peak < RSS_BAR, f"mount peak RSS {peak >> 20} MiB (bar {RSS_BAR >> 20} MiB)"
    assert ready_seconds < READY_LIMIT, f"1,000,000-file bundle took {ready_seconds:.1f}s to be ready"
    assert mounted.unmount() == 0
