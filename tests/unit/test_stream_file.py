"""Client.stream_file: a file's bytes, in order and verified, handed to a sink without touching disk."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from datarun.errors import IntegrityError, UsageError
from datarun.repo import Client
from datarun.store import LocalStore


def _bundle(tmp_path: Path) -> tuple[Client, str, bytes]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    # Several download units (UNIT_BYTES is 8 MiB), half of them compressible.
    big = os.urandom(12 << 20) + b"row,42,text\n" * (1 << 20)
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "small.txt").write_bytes(b"hello\n")
    (src / "empty").write_bytes(b"")
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("r")
    return client, client.upload("r", src, "m").bundle.id, big


def test_streams_every_byte_in_order(tmp_path: Path) -> None:
    client, bundle_id, big = _bundle(tmp_path)
    bundle = client.get_bundle("r", bundle_id)
    out = io.BytesIO()
    assert client.stream_file(bundle, "big.bin", out.write) == len(big)
    assert out.getvalue() == big
    small = io.BytesIO()
    assert client.stream_file(bundle, "sub/small.txt", small.write) == 6 and small.getvalue() == b"hello\n"
    assert client.stream_file(bundle, "empty", io.BytesIO().write) == 0


def test_a_folder_is_refused_and_a_corrupt_pack_is_an_integrity_error(tmp_path: Path) -> None:
    client, bundle_id, _ = _bundle(tmp_path)
    bundle = client.get_bundle("r", bundle_id)
    with pytest.raises(UsageError, match="not a file"):
        client.stream_file(bundle, "sub", io.BytesIO().write)
    for pack in (tmp_path / "store" / "packs").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[len(data) // 2] ^= 0xFF
            pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"big\.bin"):
        client.stream_file(bundle, "big.bin", io.BytesIO().write)
