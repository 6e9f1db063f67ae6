"""Chunking, compression, packs and index segments."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest
from pyfastcdc import FastCDC

from datarun.cas import compress
from datarun.cas.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, iter_chunks
from datarun.cas.packs import PackWriter, decode_chunk, decode_segment, encode_segment, pack_id_of
from datarun.errors import IntegrityError


def _cuts(path: Path) -> list[bytes]:
    return [bytes(c) for c in iter_chunks(path, path.stat().st_size)]


def test_streamed_and_in_memory_chunking_agree(tmp_path: Path) -> None:
    # Boundaries must not depend on how a file is read, or dedup would silently break.
    data = random.Random(1).randbytes(3 * MAX_SIZE + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    streamed = _cuts(path)
    reference = [
        bytes(data[c.offset : c.offset + c.length])
        for c in FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE).cut_buf(data)
    ]
    assert streamed == reference
    assert b"".join(streamed) == data
    assert all(MIN_SIZE <= len(c) <= MAX_SIZE for c in streamed[:-1])


def test_an_insert_only_changes_nearby_chunks(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(12 << 20)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    b.write_bytes(data[: 6 << 20] + b"inserted bytes" + data[6 << 20 :])
    ca, cb = set(_cuts(a)), set(_cuts(b))
    assert len(ca & cb) >= len(ca) - 2


def test_small_and_empty_files_are_one_or_no_chunk(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"tiny")
    (tmp_path / "e").write_bytes(b"")
    assert _cuts(tmp_path / "s") == [b"tiny"]
    assert _cuts(tmp_path / "e") == []


def test_random_bytes_are_stored_raw_and_text_is_compressed() -> None:
    noise = memoryview(os.urandom(1 << 20))
    text = memoryview(b"the same line again\n" * 50_000)
    frame, compressed = compress.encode(noise)
    assert not compressed and bytes(frame) == bytes(noise)
    frame, compressed = compress.encode(text)
    assert compressed and len(frame) < len(text) // 10
    assert compress.decode(bytes(frame), True, len(text)) == bytes(text)


def test_pack_round_trip_and_corruption_detection(tmp_path: Path) -> None:
    writer = PackWriter(tmp_path, target_size=1 << 20)
    chunks = [os.urandom(1000), b"abc" * 5000, os.urandom(10)]
    for c in chunks:
        writer.add(blake3.blake3(c).digest(), memoryview(c))
    sealed = writer.seal()
    assert sealed.path is not None  # no sink given: the pack is spooled (format 1)
    pack = sealed.path.read_bytes()
    assert sealed.pack_id == pack_id_of(sealed.chunks)
    other = PackWriter(tmp_path, target_size=1 << 20)
    for c in [*chunks[:2], b"different"]:
        other.add(blake3.blake3(c).digest(), memoryview(c))
    assert other.seal().pack_id != sealed.pack_id, "the id depends on the content"
    refs = sealed.refs()
    for ref, original in zip(refs, chunks, strict=True):
        assert decode_chunk(ref, pack[ref.offset : ref.offset + ref.stored_size]) == original
    damaged = bytearray(pack[refs[0].offset : refs[0].offset + refs[0].stored_size])
    damaged[500] ^= 0xFF
    with pytest.raises(IntegrityError, match="fails its hash check"):
        decode_chunk(refs[0], bytes(damaged))
    with pytest.raises(IntegrityError, match="truncated"):
        decode_chunk(refs[0], bytes(damaged[:-1]))


def test_segment_round_trip_and_checksum(tmp_path: Path) -> None:
    writer = PackWriter(tmp_path)
    writer.add(blake3.blake3(b"x").digest(), memoryview(b"x"))
    sealed = writer.seal()
    data = encode_segment(sealed.pack_id, sealed.chunks)
    assert decode_segment(sealed.pack_id, data) == sealed.refs()
    broken = bytearray(data)
    broken[60] ^= 1
    with pytest.raises(IntegrityError, match="corrupt"):
        decode_segment(sealed.pack_id, bytes(broken))


def test_a_segment_must_describe_the_pack_it_is_named_after(tmp_path: Path) -> None:
    writer = PackWriter(tmp_path)
    writer.add(blake3.blake3(b"x").digest(), memoryview(b"x"))
    sealed = writer.seal()
    data = encode_segment(sealed.pack_id, sealed.chunks)
    other = "ab" * 32
    with pytest.raises(IntegrityError, match="not the one it is named after"):
        decode_segment(other, data)  # a valid segment copied under another pack's name
    forged = encode_segment(other, sealed.chunks)  # well-formed, but its table is not pack `other`'s
    with pytest.raises(IntegrityError, match="does not match its pack id"):
        decode_segment(other, forged)


def test_index_lookups_after_warm_find_every_chunk_and_skip_absent_ones(tmp_path: Path) -> None:
    """warm() defers the prefix filter to the first miss; deferred or not, lookups must agree
    with the index: warm chunks, chunks only in SQLite, segments added later, absent chunks."""
    from datarun.cas.index import ChunkIndex
    from datarun.model import ChunkRef
    from datarun.store import open_store

    index = ChunkIndex(open_store(f"file://{tmp_path / 'store'}"), tmp_path / "cache")
    refs = [ChunkRef(blake3.blake3(bytes([i])).digest(), "p1", i * 10, 10, 10, False) for i in range(4)]
    index.add_segment("p1", refs[:3])
    index.warm([refs[0].digest])
    assert index.lookup(refs[0].digest) == refs[0]  # warm: served from memory
    assert index.lookup(refs[1].digest) == refs[1]  # not warm, but in SQLite: the filter must hold it
    assert index.lookup(refs[3].digest) is None
    index.add_segment("p2", refs[3:])  # added once the filter exists: it must learn the new prefixes
    assert index.lookup(refs[3].digest) == refs[3]
    assert index.lookup(blake3.blake3(b"absent").digest()) is None
    index.close()
