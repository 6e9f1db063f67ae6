"""A bundle mounted through the kernel reads back exactly like the folder it was made from."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.mount import fuse_harness
from tests.mount.fuse_harness import (
    BIG_SIZE,
    EXIT_TIMEOUT,
    Dataset,
    Mounted,
    Mounter,
    TreeEntry,
    describe_tree,
    fusermount_unmount,
    is_mount_point,
    mount_env,
    process_gone,
    walk_listing,
)

# Fixtures shared with the other mount modules (this folder has no conftest.py of ours).
source_tree = fuse_harness.source_tree
source_description = fuse_harness.source_description
shared_dataset = fuse_harness.shared_dataset
mounter = fuse_harness.mounter
shared_mount = fuse_harness.shared_mount


def assert_same_tree(mounted: Path, source: Path, want: dict[str, TreeEntry]) -> None:
    assert walk_listing(mounted) == walk_listing(source)
    got = describe_tree(mounted)
    assert sorted(got) == sorted(want)
    for rel, entry in want.items():
        seen = got[rel]
        assert seen.kind == entry.kind, rel
        if entry.kind == "f":
            assert (seen.size, seen.sha256, seen.mode, seen.mtime_ns) == (
                entry.size,
                entry.sha256,
                entry.mode,
                entry.mtime_ns,
            ), rel
        elif entry.kind == "l":
            assert seen.target == entry.target, rel


def test_the_mounted_tree_equals_the_uploaded_one(
    shared_mount: Mounted, shared_dataset: Dataset, source_description: dict[str, TreeEntry]
) -> None:
    root = shared_mount.path
    assert is_mount_point(root)
    ready = orjson.loads(shared_mount.ready_file.read_bytes())
    assert ready["bundle"] == shared_dataset.bundle.id
    assert ready["pid"] == shared_mount.proc.pid
    assert Path(ready["mount"]) == root
    assert_same_tree(root, shared_dataset.source, source_description)
    # Symlinks read back as links and resolve inside the mount.
    assert os.readlink(root / "link") == "data/medium-a.bin"
    assert (root / "link").read_bytes() == (shared_dataset.source / "data/medium-a.bin").read_bytes()
    assert sorted(os.listdir(root / "dirlink")) == ["b"]
    # The empty folder is there, and empty.
    assert (root / "empty-dir").is_dir()
    assert os.listdir(root / "empty-dir") == []
    assert (root / "empty.bin").read_bytes() == b""
    # Modes are kept: the script runs straight from the mount.
    ran = subprocess.run([str(root / "run.sh")], capture_output=True, timeout=30, check=False)
    assert (ran.returncode, ran.stdout) == (0, b"hi\n")
    # Read-only, whatever the permission bits say.
    with pytest.raises(OSError):
        (root / "one.bin").write_bytes(b"y")
    with pytest.raises(OSError):
        (root / "new-file").write_bytes(b"y")
    with pytest.raises(OSError):
        (root / "new-dir").mkdir()


def test_random_offset_reads_of_a_big_file(shared_mount: Mounted, shared_dataset: Dataset) -> None:
    want = (shared_dataset.source / "big.bin").read_bytes()
    assert len(want) == BIG_SIZE
    rng = random.Random(3)
    fd = os.open(shared_mount.path / "big.bin", os.O_RDONLY)
    try:
        for _ in range(200):
            off = rng.randrange(BIG_SIZE + 1)
            size = rng.choice([1, 511, 4096, 65536, rng.randrange(1, 4 << 20)])
            assert os.pread(fd, size, off) == want[off : off + size], (off, size)
        assert os.pread(fd, 4096, BIG_SIZE) == b""
        assert os.pread(fd, 4096, BIG_SIZE + (1 << 20)) == b""
    finally:
        os.close(fd)


def test_eight_concurrent_readers(shared_mount: Mounted, shared_dataset: Dataset) -> None:
    source = shared_dataset.source
    root = shared_mount.path
    big = (source / "big.bin").read_bytes()
    errors: list[str] = []

    def whole_file(rel: str) -> None:
        want = hashlib.sha256((source / rel).read_bytes()).hexdigest()
        got = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        if got != want:
            errors.append(f"{rel}: sha256 differs")

    def big_ranges(seed: int) -> None:
        rng = random.Random(seed)
        with (root / "big.bin").open("rb", buffering=0) as handle:
            for _ in range(40):
                off = rng.randrange(BIG_SIZE)
                size = rng.randrange(1, 2 << 20)
                handle.seek(off)
                data = handle.read(size)
                if data != big[off : off + size]:
                    errors.append(f"big.bin[{off}:{off + size}] differs")

    def big_sequential() -> None:
        if hashlib.sha256((root / "big.bin").read_bytes()).digest() != hashlib.sha256(big).digest():
            errors.append("big.bin sequential read differs")

    def guarded(fn: object, *args: object) -> threading.Thread:
        def run() -> None:
            try:
                fn(*args)  # type: ignore[operator]
            except Exception as err:
                errors.append(f"{fn}{args}: {err!r}")

        return threading.Thread(target=run)

    threads = [
        guarded(whole_file, "data/medium-a.bin"),
        guarded(whole_file, "data/medium-b.bin"),
        guarded(whole_file, "text/log.txt"),
        guarded(big_sequential),
        guarded(big_sequential),
        guarded(big_ranges, 1),
        guarded(big_ranges, 2),
        guarded(big_ranges, 3),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert errors == []


def test_no_stream_serves_the_same_bytes(
    mounter: Mounter, shared_dataset: Dataset, source_description: dict[str, TreeEntry]
) -> None:
    mounted = mounter(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id, "--no-stream")
    assert_same_tree(mounted.path, shared_dataset.source, source_description)
    staged = list((mounted.cache_dir / "mount" / "staged").iterdir())
    assert staged, "--no-stream downloads the bundle into the cache before serving it"
    assert mounted.unmount() == 0


def test_daemonize_returns_once_mounted(mounter: Mounter, shared_dataset: Dataset) -> None:
    mountpoint, home, cache = mounter.fresh_dirs()
    ready = mountpoint.parent / "ready.json"
    argv = mounter.command(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id, mountpoint)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [*argv, "--daemonize", "--ready-file", str(ready)],
            env=mount_env(home, cache),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr.decode()
        assert elapsed < 30, f"--daemonize took {elapsed:.1f}s to return"
        pid = int(done.stdout.decode().strip().splitlines()[-1])
        assert ready.exists(), "--daemonize returns only once the mount is ready"
        assert orjson.loads(ready.read_bytes())["pid"] == pid
        assert not process_gone(pid)
        assert is_mount_point(mountpoint)
        want = (shared_dataset.source / "data/medium-b.bin").read_bytes()
        assert (mountpoint / "data/medium-b.bin").read_bytes() == want
        unmounted = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        assert unmounted.returncode == 0, unmounted.stderr.decode()
        deadline = time.monotonic() + EXIT_TIMEOUT
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(pid), "the background mount keeps running after fusermount3 -u"
        assert not is_mount_point(mountpoint)
        assert not ready.exists(), "the ready file is removed at unmount"
    finally:
        fusermount_unmount(mountpoint)


def test_mount_refuses_a_non_empty_folder(mounter: Mounter, shared_dataset: Dataset) -> None:
    mountpoint, home, cache = mounter.fresh_dirs()
    (mountpoint / "occupied").write_bytes(b"")
    argv = mounter.command(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id, mountpoint)
    done = subprocess.run(argv, env=mount_env(home, cache), capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr.decode()
    assert b"not empty" in done.stderr
    assert not is_mount_point(mountpoint)
