"""Pack spools written through an aligned buffer: whole blocks go O_DIRECT, the tail buffered,
and the file holds exactly what was written, also where the filesystem refuses O_DIRECT."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from datarun.cas import directio


def _pieces() -> list[bytes]:
    # Odd sizes, so buffer boundaries fall inside pieces, plus one larger than the buffer.
    return [os.urandom(n) for n in (1, 4095, 70_001, 3 << 20, 13, 9 << 20, 777)]


def test_the_spool_holds_exactly_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    direct_bytes: list[int] = []
    fds: list[int] = []
    real_open = directio.open_direct

    def opened(path: str | os.PathLike[str]) -> int:
        fds.append(real_open(path))
        return fds[-1]

    def pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
        n = real(fd, data, offset)
        if fd in fds:
            assert offset % directio.ALIGN == 0 and n % directio.ALIGN == 0
            direct_bytes.append(n)
        return n

    monkeypatch.setattr(directio, "open_direct", opened)
    monkeypatch.setattr(os, "pwrite", pwrite)
    pieces = _pieces()
    spool = directio.AlignedSpool(tmp_path / "pack", mmap.mmap(-1, 1 << 20))
    for piece in pieces:
        assert spool.write(memoryview(piece)) == len(piece)
    spool.close()
    whole = b"".join(pieces)
    assert (tmp_path / "pack").read_bytes() == whole
    assert sum(direct_bytes) == len(whole) - len(whole) % directio.ALIGN, "every whole block went direct"


# No filesystem here refuses O_DIRECT (tmpfs takes it since Linux 6.6), so the refusal of older
# tmpfs and some FUSE filesystems is simulated at the first direct write.
def test_a_refused_direct_write_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    fds: list[int] = []
    real_open = directio.open_direct

    def opened(path: str | os.PathLike[str]) -> int:
        fds.append(real_open(path))
        return fds[-1]

    def pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
        if fd in fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(directio, "open_direct", opened)
    monkeypatch.setattr(os, "pwrite", pwrite)
    pieces = _pieces()
    spool = directio.AlignedSpool(tmp_path / "pack", mmap.mmap(-1, 1 << 20))
    for piece in pieces:
        spool.write(piece)
    spool.close()
    assert (tmp_path / "pack").read_bytes() == b"".join(pieces)
