"""Big compressible files are compressed on several threads ahead of the packer; the bytes and
their order must come out exactly as they went in, and known chunks must not be compressed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from datarun.cas import compress
from datarun.repo import Client
from datarun.store import LocalStore


def _dump_like(path: Path, mib: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        written = 0
        row = 0
        while written < mib << 20:
            line = f"{row}\t{hashlib.md5(str(row).encode()).hexdigest()}\t{rng.random()}\n"
            out.write(line)
            written += len(line)
            row += 1


def test_a_big_compressible_file_round_trips_and_a_changed_copy_compresses_only_new_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _dump_like(src / "table.dat", 40, seed=1)  # above the 16 MiB threshold for the parallel path
    _dump_like(src / "mid.dat", 9, seed=2)  # between 4 and 16 MiB: the streaming chunker, no read-ahead
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("db")
    first = client.upload("db", src, "v1", use_hash_cache=False)
    assert first.stats.bytes_stored < first.stats.bytes_new * 0.6, "text is stored compressed"
    out = tmp_path / "out"
    client.download(first.bundle, out)
    for name in ("table.dat", "mid.dat"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name

    calls: list[int] = []
    real_encode = compress.encode

    def counting_encode(chunk: memoryview) -> tuple[bytes | memoryview, bool]:
        calls.append(len(chunk))
        return real_encode(chunk)

    monkeypatch.setattr(compress, "encode", counting_encode)
    with (src / "table.dat").open("r+") as handle:  # change a few bytes in the middle
        handle.seek(20 << 20)
        handle.write("CHANGED")
    second = client.upload("db", src, "v2", use_hash_cache=False)
    assert second.stats.chunks_new <= 3
    assert len(calls) == second.stats.chunks_new, "only the new chunks were compressed"
    again = tmp_path / "again"
    client.download(second.bundle, again)
    assert (again / "table.dat").read_bytes() == (src / "table.dat").read_bytes()
    client.close()
