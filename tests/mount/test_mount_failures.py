"""A mount fails loudly and promptly: bad chunks and a vanished store give EIO, never bad bytes
or a hang, and a mount stops cleanly on a signal or `fusermount3 -u`, even with files open."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from datarun.model import ChunkRef
from tests.mount import fuse_harness
from tests.mount.fuse_harness import (
    EXIT_TIMEOUT,
    Dataset,
    Mounted,
    Mounter,
    is_mount_point,
    run_with_timeout,
    text_bytes,
    upload_local,
)

# Fixtures shared with the other mount modules (this folder has no conftest.py of ours).
source_tree = fuse_harness.source_tree
shared_dataset = fuse_harness.shared_dataset
mounter = fuse_harness.mounter

READ_TIMEOUT = 10.0


def read_outcome(path: Path, timeout: float = READ_TIMEOUT, offset: int = 0, size: int = -1) -> bytes | OSError:
    """The bytes read, or the OSError raised; fails the test if the read hangs."""

    def read() -> bytes:
        with path.open("rb", buffering=0) as handle:
            handle.seek(offset)
            return handle.read() if size < 0 else handle.read(size)

    finished, result = run_with_timeout(read, timeout)
    if not finished:
        pytest.fail(f"reading {path.name} hung for more than {timeout:.0f}s")
    if isinstance(result, OSError):
        return result
    if isinstance(result, BaseException):
        raise result
    assert isinstance(result, bytes)
    return result


def assert_eio(path: Path, mounted: Mounted, offset: int = 0) -> None:
    outcome = read_outcome(path, offset=offset)
    assert isinstance(outcome, OSError), f"reading {path.name} succeeded; expected EIO\n{mounted.log_text()}"
    assert outcome.errno == errno.EIO, f"{outcome!r}\n{mounted.log_text()}"


def flip_byte(dataset: Dataset, ref: ChunkRef) -> None:
    """Damage one byte in the middle of ``ref``'s frame inside its pack file."""
    with dataset.pack_path(ref).open("r+b") as pack:
        pack.seek(ref.offset + ref.stored_size // 2)
        old = pack.read(1)
        pack.seek(ref.offset + ref.stored_size // 2)
        pack.write(bytes([old[0] ^ 0xFF]))


def make_failure_tree(root: Path) -> Path:
    rng = random.Random(5)
    root.mkdir(parents=True)
    (root / "good.bin").write_bytes(rng.randbytes(3 << 20))
    (root / "bad.bin").write_bytes(rng.randbytes(3 << 20))
    (root / "good.txt").write_bytes(text_bytes(2 << 20, 2))
    (root / "bad.txt").write_bytes(text_bytes(3 << 20, 3))
    return root


@pytest.mark.parametrize(
    ("victim", "compressed"),
    [("bad.bin", False), ("bad.txt", True)],
    ids=["raw-chunk-mmap-path", "compressed-chunk-decode-path"],
)
def test_a_corrupted_chunk_reads_as_eio(mounter: Mounter, tmp_path: Path, victim: str, compressed: bool) -> None:
    source = make_failure_tree(tmp_path / "src")
    dataset = upload_local(source, tmp_path / "data")
    refs = dataset.chunks_of(victim)
    assert len(refs) >= 2, "the victim needs a damaged and an intact chunk"
    assert refs[0].compressed is compressed, "the test data no longer exercises the intended path"
    others = {r.digest for rel in ("good.bin", "good.txt") for r in dataset.chunks_of(rel)}
    assert not others & {r.digest for r in refs}
    flip_byte(dataset, refs[0])

    mounted = mounter(dataset.url, dataset.repo, dataset.bundle.id)
    assert_eio(mounted.path / victim, mounted)
    assert_eio(mounted.path / victim, mounted)  # again: nothing bad was cached
    # The intact chunks of the same file still read (a page past the damaged chunk's end).
    second = refs[0].size + 4096 - refs[0].size % 4096
    want = (source / victim).read_bytes()
    assert read_outcome(mounted.path / victim, offset=second, size=4096) == want[second : second + 4096]
    for rel in ("good.bin", "good.txt"):
        assert read_outcome(mounted.path / rel) == (source / rel).read_bytes(), rel
    assert "fails its hash check" in mounted.log_text() or "corrupt" in mounted.log_text()
    assert mounted.unmount() == 0


def test_a_vanished_store_gives_eio_without_hanging(mounter: Mounter, tmp_path: Path) -> None:
    rng = random.Random(9)
    first = tmp_path / "first"
    first.mkdir()
    half_read = rng.randbytes(8 << 20)
    (first / "a.bin").write_bytes(half_read)
    dataset = upload_local(first, tmp_path / "data")
    # A second bundle with a.bin (deduplicated into the first pack) and new files in a new pack,
    # so reading a.bin maps only a pack that the other files do not use.
    second = tmp_path / "second"
    second.mkdir()
    (second / "a.bin").write_bytes(half_read)
    (second / "b.bin").write_bytes(rng.randbytes(4 << 20))
    (second / "c.txt").write_bytes(text_bytes(2 << 20, 4))
    dataset.bundle = dataset.client.upload(dataset.repo, second, "second").bundle
    packs_a = {r.pack for r in dataset.chunks_of("a.bin")}
    assert not packs_a & {r.pack for rel in ("b.bin", "c.txt") for r in dataset.chunks_of(rel)}
    assert any(r.compressed for r in dataset.chunks_of("c.txt"))

    mounted = mounter(dataset.url, dataset.repo, dataset.bundle.id)
    with (mounted.path / "a.bin").open("rb", buffering=0) as handle:
        assert handle.read(4 << 20) == half_read[: 4 << 20]
        shutil.move(dataset.store / "packs", tmp_path / "packs-gone")
        assert_eio(mounted.path / "b.bin", mounted)  # raw chunks: the pack cannot be mapped
        assert_eio(mounted.path / "c.txt", mounted)  # compressed chunks: one read through the store, then EIO
        # The rest of the half-read file: its pack is still mapped, so bytes or EIO, never wrong bytes.
        finished, rest = run_with_timeout(handle.read, READ_TIMEOUT)
        assert finished, "reading the rest of a.bin hung"
        if not isinstance(rest, OSError):
            assert rest == half_read[4 << 20 :]
    assert "read of" in mounted.log_text()
    assert mounted.unmount() == 0, mounted.log_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_unmounts_even_with_open_files(mounter: Mounter, shared_dataset: Dataset, signum: int) -> None:
    mounted = mounter(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id)
    want = (shared_dataset.source / "big.bin").read_bytes()
    handle = (mounted.path / "big.bin").open("rb", buffering=0)
    directory = os.open(mounted.path / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert handle.read(1 << 20) == want[: 1 << 20]
        mounted.proc.send_signal(signum)
        try:
            code = mounted.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mount still running {EXIT_TIMEOUT:.0f}s after the signal\n{mounted.log_text()}")
        assert code == 0, mounted.log_text()
        assert not os.path.ismount(mounted.path)
        assert not is_mount_point(mounted.path)
        assert not mounted.ready_file.exists(), "the ready file is removed at unmount"
    finally:
        # The server is gone, so the kernel may answer the final flush with ENOTCONN.
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(OSError):
            os.close(directory)


def test_fusermount_unmount_stops_the_process(mounter: Mounter, shared_dataset: Dataset) -> None:
    mounted = mounter(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id)
    assert (mounted.path / "one.bin").read_bytes() == b"x"
    done = subprocess.run(["fusermount3", "-u", str(mounted.path)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    try:
        code = mounted.proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mount still running {EXIT_TIMEOUT:.0f}s after fusermount3 -u\n{mounted.log_text()}")
    assert code == 0, mounted.log_text()
    assert not is_mount_point(mounted.path)
    assert not mounted.ready_file.exists()
    assert "unmounted" in mounted.log_text()


def test_a_second_mount_on_a_mounted_folder_is_refused(mounter: Mounter, shared_dataset: Dataset) -> None:
    mounted = mounter(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id)
    argv = mounter.command(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id, mounted.path)
    _, home, cache = mounter.fresh_dirs()
    done = subprocess.run(argv, env=fuse_harness.mount_env(home, cache), capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr.decode()
    assert b"already a mount point" in done.stderr
    assert (mounted.path / "one.bin").read_bytes() == b"x", "the first mount keeps serving"


def test_a_pack_that_shrinks_after_it_was_mapped_gives_eio(mounter: Mounter, tmp_path: Path) -> None:
    # Packs are immutable, but a store on a network filesystem can lose or cut them under a
    # running mount. Touching a mapped page past the file's new end raises SIGBUS: the mount
    # must turn that into EIO for the chunks concerned instead of dying.
    source = make_failure_tree(tmp_path / "src")
    dataset = upload_local(source, tmp_path / "data")
    # In pack order: bad.bin, bad.txt, good.bin, good.txt (tree order; one pack for all).
    mapped, cut = dataset.chunks_of("bad.bin")[0], dataset.chunks_of("good.bin")[0]
    survivor = dataset.chunks_of("bad.txt")
    assert mapped.pack == cut.pack and not mapped.compressed and not cut.compressed
    assert mapped.offset < cut.offset and all(r.offset + r.stored_size <= cut.offset for r in survivor)
    mounted = mounter(dataset.url, dataset.repo, dataset.bundle.id)
    assert read_outcome(mounted.path / "bad.bin", size=4096) == (source / "bad.bin").read_bytes()[:4096]
    os.truncate(dataset.pack_path(cut), cut.offset)  # the pack is mapped now; cut good.bin off
    assert_eio(mounted.path / "good.bin", mounted)
    assert mounted.proc.poll() is None, f"the mount died (exit {mounted.proc.returncode})\n{mounted.log_text()}"
    assert read_outcome(mounted.path / "bad.txt") == (source / "bad.txt").read_bytes()


def test_a_missing_staged_file_fails_that_file_only(mounter: Mounter, tmp_path: Path) -> None:
    source = make_failure_tree(tmp_path / "src")
    dataset = upload_local(source, tmp_path / "data")
    mounted = mounter(dataset.url, dataset.repo, dataset.bundle.id, "--no-stream")
    staged = mounted.cache_dir / "mount" / "staged" / dataset.bundle.id
    (staged / "bad.bin").unlink()  # e.g. a cache cleaner ran
    outcome = read_outcome(mounted.path / "bad.bin")
    assert isinstance(outcome, OSError) and outcome.errno in (errno.EIO, errno.ENOENT), repr(outcome)
    assert mounted.proc.poll() is None, f"the mount died (exit {mounted.proc.returncode})\n{mounted.log_text()}"
    assert read_outcome(mounted.path / "good.bin") == (source / "good.bin").read_bytes()


def test_daemonize_is_not_fooled_by_a_stale_ready_file(mounter: Mounter, shared_dataset: Dataset) -> None:
    # A mount killed with SIGKILL (OOM, node drain) cannot remove its ready file. The next
    # `--daemonize` with the same ready file must report its own outcome, not the old one.
    mountpoint, home, cache = mounter.fresh_dirs()
    (mountpoint / "occupied").write_bytes(b"")  # this mount will fail
    ready = mountpoint.parent / "ready.json"
    ready.write_bytes(b'{"bundle": "stale", "pid": 1}')
    argv = mounter.command(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id, mountpoint)
    done = subprocess.run(
        [*argv, "--daemonize", "--ready-file", str(ready)],
        env=fuse_harness.mount_env(home, cache),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert not is_mount_point(mountpoint)
    assert done.returncode != 0, f"--daemonize reported success for a mount that failed: {done.stdout!r}"
    assert b"not empty" in done.stderr
