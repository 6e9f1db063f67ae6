"""Downloads from a local store: raw chunks go pack -> file through copy_file_range(2), and are
still hash-checked where they land."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from datarun.errors import IntegrityError
from datarun.repo import Client
from datarun.store import LocalStore


def _client(tmp_path: Path) -> tuple[Client, Path, str]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "random.bin").write_bytes(os.urandom(20 << 20))  # raw frames, several units
    (src / "rows.csv").write_bytes(b"id,name,value\n" + b"17,widget,3.25\n" * 200_000)  # compressed frames
    for i in range(40):
        (src / "sub" / f"small{i:02d}.bin").write_bytes(os.urandom(100 + i * 50))
    (src / "sub" / "empty").write_bytes(b"")
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("r")
    return client, src, client.upload("r", src, "m").bundle.id


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the kernel copies (the real call still does the work)."""
    real = os.copy_file_range
    sizes: list[int] = []

    def counted(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        n = real(src, dst, count, offset_src, offset_dst)
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", counted)
    return sizes


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*"))
    for rel in files_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_raw_chunks_are_copied_by_the_kernel_and_the_bytes_are_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, src, bundle_id = _client(tmp_path)
    copies = _counting(monkeypatch)
    result = client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    _same_tree(src, tmp_path / "out")
    assert result.files == 43
    assert sum(copies) >= 20 << 20, "the random file's raw frames went through copy_file_range"
    assert sum(copies) < sum(p.stat().st_size for p in src.rglob("*") if p.is_file()), "compressed frames did not"


def test_a_corrupt_raw_chunk_is_detected_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, bundle_id = _client(tmp_path)
    bundle = client.get_bundle("r", bundle_id)
    entry = client.find_file(bundle, "random.bin")
    ref = entry.chunks[len(entry.chunks) // 2]
    assert not ref.compressed
    pack = tmp_path / "store" / "packs"
    path = next(p for p in pack.rglob("*") if p.is_file() and ref.pack in p.name)
    with path.open("r+b") as f:
        f.seek(ref.offset + ref.size // 2)
        byte = f.read(1)
        f.seek(ref.offset + ref.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    copies = _counting(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"`random\.bin`: chunk .* fails its hash check"):
        client.download(bundle, out)
    assert copies, "the corrupt chunk was among the kernel copies"
    assert not (out / "random.bin").exists()
    assert not [p for p in out.rglob(".*datarun-*")], "no temp file is left behind"


def test_a_kernel_that_refuses_the_copy_falls_back_to_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, src, bundle_id = _client(tmp_path)
    refused: list[int] = []

    def refuse(*args: int) -> int:
        refused.append(1)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    fn: Callable[..., int] = refuse
    monkeypatch.setattr(os, "copy_file_range", fn)
    client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    _same_tree(src, tmp_path / "out")
    assert refused, "the copy was tried"
