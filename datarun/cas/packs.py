"""Packs: ~32 MiB objects holding many chunk frames, and the index segments that map them.

A pack is immutable and content-named: its id is the BLAKE3 of its chunk table (each frame's
digest, offset, stored size, size and flags), which pins every byte through the chunk hashes
without a second full pass over the data. Small files therefore cost one
request per pack rather than one per file. Right after a pack is durable its index segment is
written, so an upload killed half-way leaves packs that the next upload can dedup against.
"""

from __future__ import annotations

import contextlib
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from datarun.cas import compress
from datarun.cas.chunker import digest
from datarun.errors import IntegrityError, StoreError
from datarun.model import ChunkRef

PACK_TARGET_SIZE = 32 << 20

_SEGMENT_MAGIC = b"DRIX"
_SEGMENT_VERSION = 1
_HEADER = struct.Struct(">4sB32sI")  # magic, version, pack id, record count
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
    pack_id: str
    path: Path
    size: int
    chunks: list[PendingChunk]

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(c.digest, self.pack_id, c.offset, c.stored_size, c.size, c.compressed) for c in self.chunks]


class PackWriter:
    """Spools frames to a file (never to memory), hashing as it goes."""

    def __init__(self, spool_dir: Path, target_size: int = PACK_TARGET_SIZE, store_url: str = "") -> None:
        self.spool_dir = spool_dir
        self.store_url = store_url
        self.target_size = target_size
        self._path: Path | None = None
        self._handle: BinaryIO | None = None
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

    def _add(
        self, chunk_digest: bytes, chunk: memoryview, encoded: tuple[bytes | memoryview, bool] | None
    ) -> PendingChunk:
        if self._handle is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._path = self.spool_dir / f"pack-{secrets.token_hex(8)}"
            self._handle = self._path.open("wb")
            self._size = 0
            self._chunks = []
        frame, compressed = encoded if encoded is not None else compress.encode(chunk)
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
        return self._handle is None

    def seal(self) -> SealedPack:
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
        if self._handle is not None:
            with contextlib.suppress(OSError):  # already failing: keep the first error
                self._handle.close()
            if self._path is not None:
                self._path.unlink(missing_ok=True)
            self._handle = None
            self._path = None


_PACK_ID_DOMAIN = b"datarun-pack-v1\0"


def pack_id_of(chunks: list[PendingChunk]) -> str:
    table = b"".join(_RECORD.pack(c.digest, c.offset, c.stored_size, c.size, int(c.compressed)) for c in chunks)
    return str(blake3.blake3(_PACK_ID_DOMAIN + table).hexdigest())


def encode_segment(pack_id: str, chunks: Iterable[PendingChunk]) -> bytes:
    items = list(chunks)
    body = bytearray(_HEADER.pack(_SEGMENT_MAGIC, _SEGMENT_VERSION, bytes.fromhex(pack_id), len(items)))
    for c in items:
        body += _RECORD.pack(c.digest, c.offset, c.stored_size, c.size, int(c.compressed))
    body += blake3.blake3(body).digest()
    return bytes(body)


def decode_segment(name: str, data: bytes) -> list[ChunkRef]:
    if len(data) < _HEADER.size + 32 or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise IntegrityError(f"index segment `{name}` is corrupt (checksum mismatch)")
    magic, version, pack_raw, count = _HEADER.unpack_from(data)
    if magic != _SEGMENT_MAGIC or version != _SEGMENT_VERSION:
        raise IntegrityError(f"index segment `{name}` has unknown format {magic!r} v{version}")
    pack_id = pack_raw.hex()
    if len(data) != _HEADER.size + count * _RECORD.size + 32:
        raise IntegrityError(f"index segment `{name}` is truncated")
    # A segment certifies itself: its records are the pack's chunk table, whose hash is the pack id,
    # and it is stored under that id. A segment copied to another name would send dedup to the wrong pack.
    if name != pack_id:
        raise IntegrityError(f"index segment `{name}` describes pack `{pack_id}`, not the one it is named after")
    if blake3.blake3(_PACK_ID_DOMAIN + data[_HEADER.size : -32]).hexdigest() != pack_id:
        raise IntegrityError(f"index segment `{name}` does not match its pack id (chunk table hash)")
    refs = []
    for i in range(count):
        dig, offset, stored, size, flags = _RECORD.unpack_from(data, _HEADER.size + i * _RECORD.size)
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
