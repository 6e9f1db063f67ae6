"""Packs: ~32 MiB objects holding many chunk frames, and the index segments that map them.

A pack is immutable. A spooled pack (format 1) is content-named: its id is the BLAKE3 of its
chunk table (each frame's digest, offset, stored size, size and flags), which pins every byte
through the chunk hashes without a second full pass over the data. A streamed pack (format 2)
goes to a cloud store block by block while it fills, so its key is needed before its table is
known: its id is random, and its segment carries the table hash instead. Small files therefore cost one
request per pack rather than one per file. Right after a pack is durable its index segment is
written, so an upload killed half-way leaves packs that the next upload can dedup against.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import blake3

from datarun.cas import compress
from datarun.cas.chunker import digest
from datarun.cas.directio import AlignedSpool
from datarun.errors import IntegrityError, StoreError
from datarun.model import ChunkRef
from datarun.store.base import ObjectSink

PACK_TARGET_SIZE = 32 << 20
SPOOL_BUFFER = 8 << 20  # bytes gathered before a spool write: whole blocks, written around the page cache

_SEGMENT_MAGIC = b"DRIX"
_SEGMENT_VERSION = 1
_STREAMED_VERSION = 2
_HEADER = struct.Struct(">4sB32sI")  # magic, version, pack id, record count
_HEADER_V2 = struct.Struct(">4sB32s32sI")  # magic, version, pack id, table hash, record count
_RECORD = struct.Struct(">32sQIIB")  # digest, offset, stored size, size, flags


@dataclass(slots=True)
class PendingChunk:
    """A chunk placed in the open pack; its ChunkRef is known once the pack is sealed."""

    digest: bytes
    offset: int
    stored_size: int
    size: int
    compressed: bool


@dataclass(slots=True)
class SealedPack:
    """A full pack: spooled to ``path`` (format 1), or staged in ``sink`` and not yet committed
    (format 2, ``path`` is None)."""

    pack_id: str
    path: Path | None
    size: int
    chunks: list[PendingChunk]
    sink: ObjectSink | None = None

    @property
    def version(self) -> int:
        return _SEGMENT_VERSION if self.sink is None else _STREAMED_VERSION

    def segment(self) -> bytes:
        return encode_segment(self.pack_id, self.chunks, self.version)

    def drop(self) -> None:
        """Forget the pack's bytes: remove the spool file, or abandon the staged blocks."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.sink is not None:
            self.sink.abort()

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(c.digest, self.pack_id, c.offset, c.stored_size, c.size, c.compressed) for c in self.chunks]


SinkOpener = Callable[[str], ObjectSink | None]
"""Opens a staged write of one pack, given its id (the layout turns it into a key); None where
the store takes no staged writes, and the pack is spooled instead."""


class PackWriter:
    """Spools frames to a file (never to memory), hashing as it goes; or, given ``open_sink``,
    streams them into the store as the pack fills (format 2), with no file in between."""

    def __init__(
        self,
        spool_dir: Path,
        target_size: int = PACK_TARGET_SIZE,
        store_url: str = "",
        open_sink: SinkOpener | None = None,
    ) -> None:
        self.spool_dir = spool_dir
        self.store_url = store_url
        self.target_size = target_size
        self._open_sink = open_sink
        self._path: Path | None = None
        self._handle: AlignedSpool | None = None
        self._spool_buffer: mmap.mmap | None = None  # reused by every pack of this writer
        self._sink: ObjectSink | None = None
        self._pack_id = ""
        self._size = 0
        self._chunks: list[PendingChunk] = []

    def _spool_error(self, err: OSError) -> StoreError:
        # The spool lives in the store's staging folder (or the cache): a full or read-only disk
        # here is a store problem, not a problem with the file being read.
        where = f"store `{self.store_url}`: " if self.store_url else ""
        return StoreError(
            f"{where}cannot write pack spool in `{self.spool_dir}`: {err.strerror or err}; "
            "free some space or point --store at another disk"
        )

    def add(
        self, chunk_digest: bytes, chunk: memoryview, encoded: tuple[bytes | memoryview, bool] | None = None
    ) -> PendingChunk:
        """Append ``chunk``; ``encoded`` is its ``compress.encode`` result when a caller already made it."""
        try:
            return self._add(chunk_digest, chunk, encoded)
        except OSError as err:
            raise self._spool_error(err) from None

    def _start(self) -> None:
        self._size = 0
        self._chunks = []
        if self._open_sink is not None:
            # The key must exist before the first block is staged, long before the table is known.
            self._pack_id = os.urandom(32).hex()
            self._sink = self._open_sink(self._pack_id)
            if self._sink is not None:
                return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._path = self.spool_dir / f"pack-{os.urandom(8).hex()}"
        if self._spool_buffer is None:
            self._spool_buffer = mmap.mmap(-1, SPOOL_BUFFER)
        self._handle = AlignedSpool(self._path, self._spool_buffer)

    def _add(
        self, chunk_digest: bytes, chunk: memoryview, encoded: tuple[bytes | memoryview, bool] | None
    ) -> PendingChunk:
        if self.empty:
            self._start()
        frame, compressed = encoded if encoded is not None else compress.encode(chunk)
        if self._sink is not None:
            self._sink.write(frame)
        else:
            assert self._handle is not None
            self._handle.write(frame)
        pending = PendingChunk(chunk_digest, self._size, len(frame), len(chunk), compressed)
        self._size += len(frame)
        self._chunks.append(pending)
        return pending

    @property
    def full(self) -> bool:
        return self._size >= self.target_size

    @property
    def empty(self) -> bool:
        return self._handle is None and self._sink is None

    def seal(self) -> SealedPack:
        """Close the open pack. A streamed pack is not committed yet: ``SealedPack.sink`` is."""
        if self._sink is not None:
            sealed = SealedPack(self._pack_id, None, self._size, self._chunks, self._sink)
            self._sink = None
            return sealed
        assert self._handle is not None and self._path is not None
        try:
            self._handle.close()
        except OSError as err:
            self._path.unlink(missing_ok=True)
            self._handle = None
            raise self._spool_error(err) from None
        sealed = SealedPack(pack_id_of(self._chunks), self._path, self._size, self._chunks)
        self._handle = None
        self._path = None
        return sealed

    def discard(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        if self._handle is not None:
            with contextlib.suppress(OSError):  # already failing: keep the first error
                self._handle.close()
            if self._path is not None:
                self._path.unlink(missing_ok=True)
            self._handle = None
            self._path = None


_PACK_ID_DOMAIN = b"datarun-pack-v1\0"
_TABLE_DOMAIN = b"datarun-pack-v2\0"


def _table(chunks: Iterable[PendingChunk]) -> bytes:
    return b"".join(_RECORD.pack(c.digest, c.offset, c.stored_size, c.size, int(c.compressed)) for c in chunks)


def pack_id_of(chunks: list[PendingChunk]) -> str:
    """The id of a format-1 pack: the hash of its chunk table."""
    return str(blake3.blake3(_PACK_ID_DOMAIN + _table(chunks)).hexdigest())


def _table_hash(pack_raw: bytes, table: bytes) -> bytes:
    # The pack id is hashed in too, so a segment names the one pack its table belongs to.
    return bytes(blake3.blake3(_TABLE_DOMAIN + pack_raw + table).digest())


def encode_segment(pack_id: str, chunks: Iterable[PendingChunk], version: int = _SEGMENT_VERSION) -> bytes:
    """Format 1 for a content-named pack, format 2 (with the table hash) for a streamed one."""
    items = list(chunks)
    table = _table(items)
    raw = bytes.fromhex(pack_id)
    if version == _SEGMENT_VERSION:
        body = bytearray(_HEADER.pack(_SEGMENT_MAGIC, version, raw, len(items)))
    elif version == _STREAMED_VERSION:
        body = bytearray(_HEADER_V2.pack(_SEGMENT_MAGIC, version, raw, _table_hash(raw, table), len(items)))
    else:
        raise ValueError(f"unknown segment format {version}")
    body += table
    body += blake3.blake3(body).digest()
    return bytes(body)


def decode_segment(name: str, data: bytes) -> list[ChunkRef]:
    if len(data) < _HEADER.size + 32 or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise IntegrityError(f"index segment `{name}` is corrupt (checksum mismatch)")
    magic, version = data[:4], data[4]
    if magic != _SEGMENT_MAGIC or version not in (_SEGMENT_VERSION, _STREAMED_VERSION):
        raise IntegrityError(f"index segment `{name}` has unknown format {magic!r} v{version}")
    header = _HEADER if version == _SEGMENT_VERSION else _HEADER_V2
    if len(data) < header.size + 32:
        raise IntegrityError(f"index segment `{name}` is truncated")
    if version == _SEGMENT_VERSION:
        _, _, pack_raw, count = _HEADER.unpack_from(data)
        stated = b""
    else:
        _, _, pack_raw, stated, count = _HEADER_V2.unpack_from(data)
    pack_id = pack_raw.hex()
    if len(data) != header.size + count * _RECORD.size + 32:
        raise IntegrityError(f"index segment `{name}` is truncated")
    # A segment certifies itself: its records are the pack's chunk table, whose hash is the pack id
    # (format 1) or is stated in the header, bound to the pack id (format 2), and it is stored
    # under that id. A segment copied to another name would send dedup to the wrong pack.
    if name != pack_id:
        raise IntegrityError(f"index segment `{name}` describes pack `{pack_id}`, not the one it is named after")
    table = data[header.size : -32]
    if version == _SEGMENT_VERSION:
        if blake3.blake3(_PACK_ID_DOMAIN + table).hexdigest() != pack_id:
            raise IntegrityError(f"index segment `{name}` does not match its pack id (chunk table hash)")
    elif _table_hash(pack_raw, table) != stated:
        raise IntegrityError(f"index segment `{name}` does not match its table hash")
    refs = []
    for i in range(count):
        dig, offset, stored, size, flags = _RECORD.unpack_from(data, header.size + i * _RECORD.size)
        refs.append(ChunkRef(dig, pack_id, offset, stored, size, bool(flags)))
    return refs


def decode_chunk(ref: ChunkRef, frame: bytes) -> bytes:
    """Turn a stored frame back into plaintext, refusing anything whose hash is wrong."""
    if len(frame) != ref.stored_size:
        raise IntegrityError(
            f"chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} is truncated "
            f"({len(frame)} of {ref.stored_size} bytes)"
        )
    data = compress.decode(frame, ref.compressed, ref.size)
    if len(data) != ref.size or digest(data) != ref.digest:
        raise IntegrityError(f"chunk {ref.digest.hex()[:16]} in pack {ref.pack[:16]} fails its hash check")
    return data
