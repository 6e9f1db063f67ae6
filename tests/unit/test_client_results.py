"""The Client answers with frozen result objects, never with the transfer machinery behind them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datarun.repo import Client, DownloadResult
from datarun.store import LocalStore


def test_download_returns_what_it_wrote(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 8192)
    (src / "link").symlink_to("a.txt")
    with Client(LocalStore(tmp_path / "store"), cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        bundle = client.upload("r", src, "m").bundle
        done = client.download(bundle, tmp_path / "out")
    assert isinstance(done, DownloadResult)
    assert (done.bundle, done.destination, done.files, done.bytes) == (bundle, tmp_path / "out", 2, 6 + 256 * 8192)
    assert done.files == bundle.file_count and done.bytes == bundle.total_size and done.seconds > 0
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.files = 0  # type: ignore[misc]
