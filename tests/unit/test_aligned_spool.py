"""Pack spools written through an aligned buffer: whole blocks go O_DIRECT, the tail buffered,
and the file holds exactly what was written, also where the filesystem refuses O_DIRECT."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from datarun.cas import directio
from tests.unit.directwrites import count_direct_bytes, refuse_direct_writes


def _pieces() -> list[bytes]:
    # Odd sizes, so buffer boundaries fall inside pieces, plus one larger than the buffer.
    return [os.urandom(n) for n in (1, 4095, 70_001, 3 << 20, 13, 9 << 20, 777)]


def test_the_spool_holds_exactly_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct_bytes = count_direct_bytes(monkeypatch)
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
    tried = refuse_direct_writes(monkeypatch)
    pieces = _pieces()
    spool = directio.AlignedSpool(tmp_path / "pack", mmap.mmap(-1, 1 << 20))
    for piece in pieces:
        spool.write(piece)
    spool.close()
    assert (tmp_path / "pack").read_bytes() == b"".join(pieces)
    assert tried, "a direct write was tried"
