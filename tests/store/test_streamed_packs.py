"""Streamed packs (format 2) on Azurite, and stores written in format 1 still reading.

On Azure an upload stages a pack's blocks as the pack fills and commits them with one request
once it is sealed; the pack's key is therefore random, and its segment carries the table hash
(FORMAT.md §3, §4). These tests run against Azurite and real local folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import blake3
import pytest

from datarun.cas.packs import decode_segment
from datarun.errors import IntegrityError, ObjectNotFound
from datarun.gc.check import check_store
from datarun.layout import pack_key
from datarun.repo import Client
from datarun.store import LocalStore
from tests.store.emulators import Azurite

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "store-format1"
ROOT = Path(__file__).resolve().parent.parent.parent


def _tree(root: Path, big: int) -> Path:
    (root / "d").mkdir(parents=True)
    # Incompressible bytes so the packs really are ~32 MiB each: two packs and a tail.
    (root / "d" / "big.bin").write_bytes(os.urandom(big))
    (root / "d" / "notes.txt").write_text("streamed straight into the store\n" * 5000)
    return root


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    for name in names:
        if (a / name).is_file():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_an_azure_upload_streams_format_2_packs_that_read_back_and_check(
    azurite_server: Azurite, tmp_path: Path
) -> None:
    bucket = azurite_server.new_bucket()
    store = azurite_server.store(bucket)
    src = _tree(tmp_path / "src", 70 << 20)
    with Client(store, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        result = client.upload("r", src, "streamed")
        assert result.stats.packs == 3
        # Nothing was spooled to disk on the way: the spool folder holds no pack file.
        assert not list((tmp_path / "cache").rglob("pack-*"))
        segments = [i.key for i in store.list("index/")]
        assert len(segments) == 3
        for key in segments:
            data, _ = store.read(key)
            assert data[4] == 2, "a streamed pack has a format-2 segment"
            refs = decode_segment(key.split("/")[-1], data)
            assert store.head(pack_key(refs[0].pack)).size == refs[-1].offset + refs[-1].stored_size
        client.download(result.bundle, tmp_path / "out")
        _same_tree(src, tmp_path / "out")
        assert client.verify(result.bundle).ok
        report = check_store(client.meta, client.blobs, read_data=True)
        assert report.ok, report.problems
        assert report.segments == 3
    azurite_server.drop_bucket(bucket)


def test_a_format_2_segment_with_a_wrong_table_hash_is_refused(azurite_server: Azurite, tmp_path: Path) -> None:
    bucket = azurite_server.new_bucket()
    store = azurite_server.store(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(1 << 20))
    with Client(store, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        client.upload("r", src, "one pack")
        [key] = [i.key for i in store.list("index/")]
        stored = store.read(key)[0]
    name = key.split("/")[-1]
    assert decode_segment(name, stored)
    data = bytearray(stored)
    data[41] ^= 1  # a bit of the stated table hash; the trailer is re-sealed so only the hash is wrong
    data[-32:] = blake3.blake3(bytes(data[:-32])).digest()
    with pytest.raises(IntegrityError, match="does not match its table hash"):
        decode_segment(name, bytes(data))
    # The same segment stored under another pack's name is refused too.
    with pytest.raises(IntegrityError, match="not the one it is named after"):
        decode_segment("0" * 64, stored)
    azurite_server.drop_bucket(bucket)


def test_a_staged_pack_is_invisible_until_committed_and_after_abort(azurite_server: Azurite) -> None:
    bucket = azurite_server.new_bucket()
    store = azurite_server.store(bucket)
    sink = store.open_sink("packs/ab/abandoned")
    assert sink is not None
    sink.write(os.urandom(20 << 20))  # two blocks staged already
    with pytest.raises(ObjectNotFound):
        store.head("packs/ab/abandoned")
    sink.abort()
    assert [i.key for i in store.list("packs/")] == []
    kept = store.open_sink("packs/cd/kept")
    assert kept is not None
    payload = os.urandom(9 << 20)
    kept.write(payload[: 5 << 20])
    kept.write(payload[5 << 20 :])
    assert [i.key for i in store.list("packs/")] == []
    info = kept.commit()
    assert info.size == len(payload)
    assert store.read("packs/cd/kept")[0] == payload
    store.close()
    azurite_server.drop_bucket(bucket)


def test_a_killed_upload_leaves_no_bundle_and_no_half_pack(azurite_server: Azurite, tmp_path: Path) -> None:
    """A process killed (SIGKILL) after staging blocks of its open pack: no bundle, no pack object."""
    bucket = azurite_server.new_bucket()
    src = _tree(tmp_path / "src", 20 << 20)  # one pack, never sealed before the kill
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from datarun.repo import Client
        from datarun.store.azure import AzureStore, _BlockSink
        store = AzureStore.from_url("az://{bucket}/datarun")
        staged = []
        real = _BlockSink._stage
        def stage(self):
            real(self)
            staged.append(1)
            if len(staged) == 2:  # two blocks of the open pack are on their way: die here
                for f in self._staging:
                    f.result()
                os.kill(os.getpid(), 9)
        _BlockSink._stage = stage
        with Client(store, cache_dir=Path(sys.argv[1])) as client:
            client.create_repo("r")
            client.upload("r", sys.argv[2], "killed")
        """
    )
    env = {**os.environ, **azurite_server.env(), "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    ran = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache"), str(src)], env=env, timeout=120)
    assert ran.returncode == -9
    store = azurite_server.store(bucket)
    with Client(store, cache_dir=tmp_path / "cache2") as client:
        assert client.list_bundles("r") == []
        assert [i.key for i in store.list("packs/")] == []
        assert [i.key for i in store.list("index/")] == []
    azurite_server.drop_bucket(bucket)


def test_a_store_written_by_the_previous_release_still_reads_and_verifies(tmp_path: Path) -> None:
    """tests/fixtures/store-format1 was written by datarun at 5c086b8 (format-1 packs and segments)."""
    shutil.copytree(FIXTURE, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    [segment] = [i.key for i in store.list("index/")]
    assert store.read(segment)[0][4] == 1
    with Client(store, cache_dir=tmp_path / "cache") as client:
        bundle = client.resolve("old", label="v1")
        client.download(bundle, tmp_path / "out")
        assert (tmp_path / "out" / "a.txt").read_text() == "hello datarun format 1\n" * 2000
        assert len((tmp_path / "out" / "sub" / "b.bin").read_bytes()) == 20000
        assert os.readlink(tmp_path / "out" / "link") == "sub/b.bin"
        assert client.verify(bundle).ok
        report = check_store(client.meta, client.blobs, read_data=True)
        assert report.ok, report.problems
        # A new upload that reuses the old chunks dedups against the format-1 segment.
        shutil.copytree(tmp_path / "out", tmp_path / "again", symlinks=True)
        again = client.upload("old", tmp_path / "again", "same bytes")
        assert again.stats.chunks_new == 0
