"""Mounted bundles read back exactly, fail loudly on bad data, and unmount cleanly."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import threading
from pathlib import Path

import pytest

from tests.mount.core_fixtures import Bundled


def _tree(root: Path) -> dict[str, tuple[str, int, int]]:
    out: dict[str, tuple[str, int, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = (os.readlink(path), 0, 0)
            else:
                out[rel] = ("dir", 0, 0)
    return out


def test_listing_contents_sizes_and_modes_match_the_source(bundled: Bundled) -> None:
    mounted = bundled.mount()
    try:
        assert _tree(mounted.path) == _tree(bundled.tmp / "src")
        assert (mounted.path / "link").read_text() == "compressible text\n" * 20_000
        with pytest.raises(OSError) as info:
            (mounted.path / "new.txt").write_text("x")
        assert info.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    finally:
        assert mounted.unmount() == 0
    assert not os.path.ismount(mounted.path) and not mounted.ready_file.exists()


def test_random_offset_reads_and_concurrent_readers(bundled: Bundled) -> None:
    source = (bundled.tmp / "src" / "big.bin").read_bytes()
    mounted = bundled.mount("--memory-cache-size", "8M")
    try:
        rng = random.Random(5)
        fd = os.open(mounted.path / "big.bin", os.O_RDONLY)
        try:
            for _ in range(200):
                off = rng.randrange(0, len(source))
                size = rng.randrange(1, 3 << 20)
                assert os.pread(fd, size, off) == source[off : off + size]
        finally:
            os.close(fd)
        failures: list[str] = []

        def reader(name: str) -> None:
            expected = (bundled.tmp / "src" / name).read_bytes()
            if (mounted.path / name).read_bytes() != expected:
                failures.append(name)

        names = ["big.bin", "docs/notes.txt", "docs/deep/small.bin", "big.bin"] * 2
        threads = [threading.Thread(target=reader, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
    finally:
        mounted.unmount()


@pytest.mark.parametrize("victim", ["big.bin", "docs/notes.txt"])  # raw (mmap path) and compressed frames
def test_corrupted_chunk_gives_eio_and_other_files_still_read(bundled: Bundled, victim: str) -> None:
    entry = bundled.client.find_file(bundled.client.get_bundle("r", bundled.bundle), victim)
    ref = entry.chunks[0]
    pack = bundled.store / "packs" / ref.pack[:2] / ref.pack
    data = bytearray(pack.read_bytes())
    data[ref.offset + ref.stored_size // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    mounted = bundled.mount()
    try:
        with pytest.raises(OSError) as info:
            (mounted.path / victim).read_bytes()
        assert info.value.errno == errno.EIO
        assert (mounted.path / "tool.sh").read_text() == "#!/bin/sh\n"
    finally:
        mounted.unmount()


def test_store_gone_mid_read_gives_eio_without_hanging(bundled: Bundled) -> None:
    mounted = bundled.mount()
    try:
        assert (mounted.path / "docs" / "deep" / "small.bin").stat().st_size == 5000
        shutil.move(bundled.store / "packs", bundled.tmp / "packs-away")
        outcome: list[BaseException | bytes] = []
        worker = threading.Thread(target=lambda: _capture(outcome, mounted.path / "big.bin"), daemon=True)
        worker.start()
        worker.join(20)
        assert not worker.is_alive(), "the read hung"
        assert isinstance(outcome[0], OSError) and outcome[0].errno == errno.EIO
    finally:
        mounted.unmount()


def _capture(outcome: list[BaseException | bytes], path: Path) -> None:
    try:
        outcome.append(path.read_bytes())
    except OSError as err:
        outcome.append(err)


def test_sigterm_unmounts_even_with_open_files(bundled: Bundled) -> None:
    mounted = bundled.mount()
    handle = (mounted.path / "big.bin").open("rb")
    try:
        assert len(handle.read(1000)) == 1000
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(timeout=20) == 0
    finally:
        # The filesystem is gone: the kernel answers ENOTCONN to the late close, nothing hangs.
        with contextlib.suppress(OSError):
            handle.close()
    assert not os.path.ismount(mounted.path)
    assert not mounted.ready_file.exists()


def test_no_stream_serves_the_same_bytes(bundled: Bundled) -> None:
    mounted = bundled.mount("--no-stream")
    try:
        assert _tree(mounted.path) == _tree(bundled.tmp / "src")
    finally:
        assert mounted.unmount() == 0
