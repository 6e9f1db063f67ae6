"""datarun:// through real readers: pandas, pyarrow.dataset, DuckDB, fsspec.open, datarun.open."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import fsspec
import pandas as pd
import pyarrow.dataset as ds
import pytest

import datarun
from datarun.errors import IntegrityError, UsageError
from datarun.fs.spec import DatarunFileSystem
from datarun.repo import Client
from datarun.store import LocalStore
from tests.fs.conftest import Served, make_source


def test_pandas_reads_csv_and_parquet_by_label_and_by_id(served: Served) -> None:
    opts = {"store": served.url}
    expected = pd.read_csv(served.src / "meta.csv")
    by_label = pd.read_csv("datarun://images@latest/meta.csv", storage_options=opts)
    by_id = pd.read_csv(f"datarun://images@{served.bundle_id}/meta.csv", storage_options=opts)
    pd.testing.assert_frame_equal(by_label, expected)
    pd.testing.assert_frame_equal(by_id, expected)
    part = pd.read_parquet("datarun://images@latest/pq/part-1.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(part, pd.read_parquet(served.src / "pq" / "part-1.parquet"))


def test_store_from_the_environment_or_the_config_file_as_the_cli_chooses_it(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATARUN_STORE", served.url)
    frame = pd.read_csv("datarun://images@latest/meta.csv")
    assert list(frame["name"])[:2] == ["frame-0", "frame-1"]
    monkeypatch.delenv("DATARUN_STORE")
    DatarunFileSystem.clear_instance_cache()
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {served.url}\n")
    monkeypatch.setenv("DATARUN_CONFIG", str(config))
    with fsspec.open("datarun://images@latest/meta.csv", "rb") as handle:
        assert handle.read().startswith(b"id,name\n0,frame-0\n")


def test_pyarrow_dataset_over_a_folder_of_parquet(served: Served) -> None:
    fs = fsspec.filesystem("datarun", store=served.url)
    table = ds.dataset("images@latest/pq", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 3000
    assert sorted(table.column("x").to_pylist()) == list(range(3000))


def test_duckdb_through_its_fsspec_registration(served: Served) -> None:
    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("datarun", store=served.url))
    rows = con.sql("select count(*), sum(x) from read_parquet('datarun://images@latest/pq/*.parquet')").fetchall()
    assert rows == [(3000, sum(range(3000)))]


def test_fsspec_open_listing_and_info(served: Served) -> None:
    with fsspec.open("datarun://images@latest/meta.csv", "r", store=served.url) as handle:
        assert handle.readline().strip() == "id,name"
    fs = fsspec.filesystem("datarun", store=served.url)
    assert fs.ls("datarun://images@latest", detail=False) == [
        "images@latest/big.bin",
        "images@latest/meta.csv",
        "images@latest/pq",
    ]
    assert fs.info("images@latest/big.bin")["size"] == 12 << 20
    assert fs.isdir("images@latest/pq") and not fs.exists("images@latest/nope.csv")
    assert fs.cat_file("images@latest/big.bin", start=-4) == (served.src / "big.bin").read_bytes()[-4:]


def test_ranged_reads_fetch_only_the_chunks_they_touch(served: Served) -> None:
    data = (served.src / "big.bin").read_bytes()
    fs = fsspec.filesystem("datarun", store=served.url)
    with fs.open("images@latest/big.bin") as handle:
        chunks = handle.entry.chunks
        assert len(chunks) >= 6, "the test needs a many-chunk file"
        middle = sum(c.size for c in chunks[:3]) + 10  # 10 bytes into the fourth chunk
        handle.seek(middle)
        assert handle.read(100) == data[middle : middle + 100]
        assert handle.fetched_bytes == chunks[3].size
        # The same chunk again is served from the cache: nothing more is fetched.
        assert handle.pread(middle + 200, 50) == data[middle + 200 : middle + 250]
        assert handle.fetched_bytes == chunks[3].size


def test_datarun_open_without_fsspec(served: Served) -> None:
    data = (served.src / "big.bin").read_bytes()
    with datarun.open("datarun://images@latest/big.bin", store=served.url) as handle:
        handle.seek(5 << 20)
        assert handle.read(1000) == data[5 << 20 : (5 << 20) + 1000]
        handle.seek(0)
        assert handle.read() == data
    with datarun.open("datarun://images@latest/meta.csv", "r", client=served.client) as text:
        assert text.read().splitlines()[1] == "0,frame-0"


def test_bad_urls_and_writes_are_refused(served: Served) -> None:
    fs = fsspec.filesystem("datarun", store=served.url)
    with pytest.raises(UsageError, match="does not name a bundle"):
        fs.info("images/meta.csv")
    with pytest.raises(UsageError, match="clean relative path"):
        fs.info("images@latest/pq/../../etc/passwd")
    with pytest.raises(FileNotFoundError, match="repo `ghosts` not found"):
        fs.info("ghosts@latest/a.csv")
    with pytest.raises(FileNotFoundError, match="label `gone` not found"):
        fs.info("images@gone/a.csv")
    with pytest.raises(PermissionError, match="read-only"):
        fs.open("images@latest/new.csv", "wb")
    with pytest.raises(PermissionError, match="read-only"):
        fs.rm("images@latest/meta.csv")
    with pytest.raises(UsageError, match="read-only"):
        datarun.open("datarun://images@latest/meta.csv", "w", store=served.url)
    with pytest.raises(UsageError, match="folder"):
        datarun.open("datarun://images@latest/pq", store=served.url)


def test_a_corrupt_chunk_fails_the_read(tmp_path: Path) -> None:
    # On the local store, where packs can be damaged in place; the check is the same for every store.
    store = LocalStore(tmp_path / "store")
    client = Client(store, cache_dir=tmp_path / "cache")
    client.create_repo("images")
    client.upload("images", make_source(tmp_path), "frames", label="latest")
    for pack in store.local_path("packs").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            for at in range(0, len(raw), 1 << 16):
                raw[at] ^= 0xFF
            pack.write_bytes(bytes(raw))
    with (
        datarun.open("datarun://images@latest/big.bin", client=client) as handle,
        pytest.raises(IntegrityError, match=r"big\.bin"),
    ):
        handle.read(10)
    client.close()


def test_concurrent_reads_from_threads_get_the_right_bytes_and_share_fetches(served: Served) -> None:
    # pyarrow reads column chunks of one file from several threads at once.
    data = (served.src / "big.bin").read_bytes()
    fs = fsspec.filesystem("datarun", store=served.url)
    rng = random.Random(5)
    ranges = [(rng.randrange(len(data)), rng.randrange(1, 3 << 20)) for _ in range(40)]
    with fs.open("images@latest/big.bin") as handle, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: handle.pread(*r), ranges))
        for (start, length), got in zip(ranges, results, strict=True):
            assert got == data[start : start + length]
        # The 64 MiB cache holds the whole 12 MiB file: no chunk was fetched twice.
        assert handle.fetched_bytes <= len(data)


def test_a_label_move_is_seen_after_label_ttl(served: Served, tmp_path: Path) -> None:
    pinned = fsspec.filesystem("datarun", store=served.url, label_ttl=3600, skip_instance_cache=True)
    live = fsspec.filesystem("datarun", store=served.url, label_ttl=0, skip_instance_cache=True)
    assert pinned.cat_file("images@latest/meta.csv").startswith(b"id,name\n0,")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "meta.csv").write_text("id,name\n99,moved\n")
    served.client.upload("images", changed, "moved", label="latest")
    assert live.cat_file("images@latest/meta.csv") == b"id,name\n99,moved\n"
    # Within its TTL a filesystem keeps the bundle it resolved: one dataset read sees one bundle.
    assert pinned.cat_file("images@latest/meta.csv").startswith(b"id,name\n0,")
    assert pinned.cat_file(f"images@{served.bundle_id}/meta.csv").startswith(b"id,name\n0,")
