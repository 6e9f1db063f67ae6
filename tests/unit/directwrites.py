"""Watching the O_DIRECT writes of cas/directio: which descriptors are direct, and what goes to them."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from datarun.cas import directio

Write = Callable[[int, memoryview | bytes, int], int]


def on_direct_writes(
    monkeypatch: pytest.MonkeyPatch, handle: Callable[[Write, int, memoryview | bytes, int], int]
) -> None:
    """Route every ``os.pwrite`` to a descriptor from ``directio.open_direct`` through ``handle``
    (given the real ``pwrite`` first); every other write goes through unchanged."""
    real_open, real_pwrite = directio.open_direct, os.pwrite
    direct_fds: set[int] = set()

    def opened(path: str | os.PathLike[str]) -> int:
        fd = real_open(path)
        direct_fds.add(fd)
        return fd

    def pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
        if fd in direct_fds:
            return handle(real_pwrite, fd, data, offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio, "open_direct", opened)
    monkeypatch.setattr(os, "pwrite", pwrite)


def count_direct_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the direct writes, each checked to be whole aligned blocks (the writes still happen)."""
    written: list[int] = []

    def aligned(real: Write, fd: int, data: memoryview | bytes, offset: int) -> int:
        n = real(fd, data, offset)
        assert offset % directio.ALIGN == 0 and n % directio.ALIGN == 0, "direct writes are whole aligned blocks"
        written.append(n)
        return n

    on_direct_writes(monkeypatch, aligned)
    return written


def refuse_direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every direct write fails with EINVAL, as on older tmpfs; returns the offsets tried."""
    tried: list[int] = []

    def refuse(real: Write, fd: int, data: memoryview | bytes, offset: int) -> int:
        tried.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    on_direct_writes(monkeypatch, refuse)
    return tried
