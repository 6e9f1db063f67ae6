"""`check --read-data` finds each kind of damage and names the object; `--repair` rebuilds
segments and never deletes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from datarun.gc.check import CheckReport, check_store
from datarun.layout import pack_key, segment_key
from datarun.model import Bundle
from datarun.repo import Client
from tests.gc.conftest import random_tree


@pytest.fixture
def stored(client: Client, tmp_path: Path) -> tuple[Client, Bundle, str]:
    client.create_repo("data")
    bundle = client.upload("data", random_tree(tmp_path / "t", files=2, size=100_000), "one").bundle
    pack = next(iter(client.list_files(bundle))).chunks[0].pack
    return client, bundle, pack


def _check(client: Client, **kw: object) -> CheckReport:
    return check_store(client.meta, client.blobs, read_data=True, cache_dir=client.cache_dir, **kw)  # type: ignore[arg-type]


def _local(client: Client, key: str) -> Path:
    return Path(client.blobs.url.removeprefix("file://")) / key


def test_a_clean_store_checks_clean(stored: tuple[Client, Bundle, str]) -> None:
    client, _, _ = stored
    report = _check(client)
    assert report.ok, report.problems
    assert report.chunks_read >= 2 and report.records >= 2 and report.segments == 1


def test_a_flipped_byte_in_a_pack(stored: tuple[Client, Bundle, str]) -> None:
    client, _, pack = stored
    path = _local(client, pack_key(pack))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert check_store(client.meta, client.blobs).ok  # metadata alone cannot see it
    report = _check(client)
    assert [p.kind for p in report.problems] == ["data"]
    assert pack_key(pack) in report.problems[0].message and "hash check" in report.problems[0].message


def test_a_deleted_pack(stored: tuple[Client, Bundle, str]) -> None:
    client, bundle, pack = stored
    _local(client, pack_key(pack)).unlink()
    report = _check(client)
    assert report.problems and report.problems[0].kind == "pack"
    assert report.problems[0].key == pack_key(pack)
    assert "missing" in report.problems[0].message and bundle.id in report.problems[0].message


def test_a_truncated_index_segment_and_its_repair(stored: tuple[Client, Bundle, str]) -> None:
    client, _, pack = stored
    path = _local(client, segment_key(pack))
    good = path.read_bytes()
    path.write_bytes(good[:-40])
    report = _check(client)
    assert [p.kind for p in report.problems] == ["index"]
    assert segment_key(pack) in report.problems[0].message
    repaired = _check(client, repair=True)
    assert segment_key(pack) in repaired.repaired
    assert path.read_bytes() == good  # rebuilt from the manifest's refs, byte for byte
    assert _check(client).ok


def test_a_record_with_a_bad_field(stored: tuple[Client, Bundle, str]) -> None:
    client, bundle, _ = stored
    key = f"repos/data/bundles/{bundle.id}.json"
    record = orjson.loads(client.meta.read(key)[0])
    record["file_count"] = "many"
    client.meta.put(key, orjson.dumps(record))
    report = _check(client)
    assert [p.kind for p in report.problems] == ["record"]
    assert report.problems[0].key == key and "`file_count`" in report.problems[0].message


def test_repair_never_deletes(stored: tuple[Client, Bundle, str]) -> None:
    client, _, pack = stored
    _local(client, pack_key(pack)).unlink()
    keys = sorted(i.key for i in client.meta.list(""))
    report = _check(client, repair=True)
    assert not report.ok
    assert sorted(i.key for i in client.meta.list("")) == keys
