"""Downloads from a local store: raw frames are read from the pack straight into the buffer that
is written, hash-checked there, and large files are written with O_DIRECT around the page cache.
Modes and times come back exactly, whatever the umask."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from datarun.cas import directio as direct
from datarun.errors import IntegrityError
from datarun.repo import Client
from datarun.store import LocalStore
from tests.unit.directwrites import count_direct_bytes, refuse_direct_writes


def _client(tmp_path: Path) -> tuple[Client, Path, str]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "random.bin").write_bytes(os.urandom(20 << 20) + b"tail that is not a whole block")  # raw frames
    (src / "rows.csv").write_bytes(b"id,name,value\n" + b"17,widget,3.25\n" * 200_000)  # compressed frames
    for i in range(40):
        (src / "sub" / f"small{i:02d}.bin").write_bytes(os.urandom(100 + i * 50))
    (src / "sub" / "empty").write_bytes(b"")
    (src / "tool.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "tool.sh").chmod(0o755)
    (src / "secret.bin").write_bytes(os.urandom(3 << 20))
    (src / "secret.bin").chmod(0o400)  # read-only and large: written direct, made read-only at the end
    client = Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache")
    client.create_repo("r")
    return client, src, client.upload("r", src, "m").bundle.id


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*"))
    for rel in files_a:
        sa, sb = (a / rel).lstat(), (b / rel).lstat()
        assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), rel
        if (a / rel).is_file():
            assert sa.st_mtime_ns == sb.st_mtime_ns, rel
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_large_files_go_direct_and_everything_comes_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, src, bundle_id = _client(tmp_path)
    written = count_direct_bytes(monkeypatch)
    result = client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    _same_tree(src, tmp_path / "out")
    assert result.files == 45
    big = sum(p.stat().st_size for p in src.rglob("*") if p.stat().st_size >= direct.DIRECT_FROM)
    assert big - 64 * direct.ALIGN <= sum(written) <= big, (
        "the large files' whole blocks went direct, compressed ones too"
    )
    assert not list((tmp_path / "out").rglob(".*datarun-*")), "no temp file is left behind"


def test_modes_survive_a_strict_umask(tmp_path: Path) -> None:
    client, src, bundle_id = _client(tmp_path)
    old = os.umask(0o077)
    try:
        client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    finally:
        os.umask(old)
    _same_tree(src, tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "tool.sh").stat().st_mode) == 0o755


def test_a_corrupt_raw_chunk_is_detected_and_leaves_no_file(tmp_path: Path) -> None:
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
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"`random\.bin`: chunk .* fails its hash check"):
        client.download(bundle, out)
    assert not (out / "random.bin").exists()
    assert not [p for p in out.rglob(".*datarun-*")], "no temp file is left behind"


def test_a_truncated_pack_is_an_integrity_error(tmp_path: Path) -> None:
    client, _, bundle_id = _client(tmp_path)
    bundle = client.get_bundle("r", bundle_id)
    ref = client.find_file(bundle, "random.bin").chunks[-1]
    path = next(p for p in (tmp_path / "store" / "packs").rglob("*") if p.is_file() and ref.pack in p.name)
    os.truncate(path, ref.offset + 10)
    with pytest.raises(IntegrityError, match=r"`random\.bin`: chunk .* (is truncated|fails its hash check)"):
        client.download(bundle, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob(".*datarun-*")]


# This kernel's tmpfs accepts O_DIRECT (since Linux 6.6), so no filesystem here refuses it: the
# refusal is simulated, once at open and once at the first write, as older tmpfs and some FUSE
# filesystems answer.
def test_a_filesystem_that_refuses_direct_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, src, bundle_id = _client(tmp_path)
    real = os.open

    def refusing(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    _same_tree(src, tmp_path / "out")


def test_a_filesystem_that_refuses_direct_writes_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, src, bundle_id = _client(tmp_path)
    refused = refuse_direct_writes(monkeypatch)
    client.download(client.get_bundle("r", bundle_id), tmp_path / "out")
    _same_tree(src, tmp_path / "out")
    assert refused, "a direct write was tried"
    assert len(refused) <= client.workers, "after a refusal the download stops trying direct writes"
