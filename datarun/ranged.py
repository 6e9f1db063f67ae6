"""Ranged reads of a bundle's files, chunk by chunk, for readers that cache by chunk (fsspec,
``datarun.open``, the web view's downloads). On a local store an uncompressed chunk is a read-only
view of its memory-mapped pack, served the way the mount serves it; elsewhere nearby frames of a
pack come in one ranged request. Every chunk is hash-checked before a byte of it is returned.
"""

from __future__ import annotations

from datarun.cas.reader import read_chunks
from datarun.errors import IntegrityError, UsageError
from datarun.model import FILE, FileEntry
from datarun.mount.chunks import ChunkSource
from datarun.store import ObjectStore


class RangedReader:
    """Chunks and byte ranges of files in ``blobs``; one per client (it keeps the mapped packs)."""

    def __init__(self, blobs: ObjectStore) -> None:
        self.blobs = blobs
        self._mapped: ChunkSource | None = None

    def close(self) -> None:
        if self._mapped is not None:
            self._mapped.close()

    def read_chunks(self, entry: FileEntry, first: int, count: int) -> list[bytes | memoryview]:
        """The plaintext of chunks ``first .. first+count`` of the file ``entry``, each hash-checked.

        For readers that cache by chunk (fsspec, ``datarun.open``); chunk sizes, and so their
        offsets, are in ``entry.chunks``. From a remote store nearby frames of a pack come in one
        request. From a local store an uncompressed chunk is a read-only view of its mapped pack,
        checked the first time this client serves it, as the mount serves it: no copy at all,
        which is what lets a parquet reader run close to the speed of a plain local file.
        """
        if entry.kind != FILE:
            raise UsageError(f"`{entry.path}` is a {entry.kind}, not a file")
        refs = list(entry.chunks[first : first + count])
        mapped = self._mapped_chunks()
        if mapped is None:
            return list(read_chunks(self.blobs, refs, [entry.path] * len(refs)))
        out: list[bytes | memoryview | None] = []
        try:
            out = [mapped.view(ref) for ref in refs]
        except IntegrityError as err:
            raise IntegrityError(f"`{entry.path}`: {err}") from None
        rest = [i for i, got in enumerate(out) if got is None]  # compressed: decoded into memory
        if rest:
            fetched = read_chunks(self.blobs, [refs[i] for i in rest], [entry.path] * len(rest))
            for i, data in zip(rest, fetched, strict=True):
                out[i] = data
        return [got for got in out if got is not None]

    def _mapped_chunks(self) -> ChunkSource | None:
        # Only a store with local paths has packs to map; the others answer ranged reads.
        if self._mapped is None and self.blobs.local_path() is not None:
            self._mapped = ChunkSource(self.blobs, None, memory_bytes=0, disk_bytes=0, workers=1)
        return self._mapped

    def read_range(self, entry: FileEntry, start: int, length: int) -> bytes:
        """Bytes ``start .. start+length`` of the file ``entry`` (short only at its end), fetching
        only the chunks that overlap the range, each hash-checked before any byte is returned."""
        if start < 0 or length < 0:
            raise UsageError(f"range {start}+{length} of `{entry.path}` is negative")
        end = min(start + length, entry.size)
        if start >= end:
            return b""
        first, count, first_offset, offset = -1, 0, 0, 0
        for i, ref in enumerate(entry.chunks):
            if offset + ref.size > start and first < 0:
                first, first_offset = i, offset
            offset += ref.size
            if offset >= end:
                count = i + 1 - first
                break
        data = b"".join(self.read_chunks(entry, first, count))
        return data[start - first_offset : end - first_offset]
