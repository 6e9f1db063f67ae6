"""Upload: a folder tree into packs and a manifest, one streaming pass per file.

read -> cut (FastCDC) -> hash (BLAKE3) -> dedup lookup -> compress-if-worthwhile -> append to a
spooled pack. Full packs are handed to a small pool that makes them durable in the store, then
writes their index segment. Memory stays at a few chunk buffers whatever the file sizes; pack
bytes live in a spool file, not in RAM.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from datarun.cas import compress
from datarun.cas.chunker import digest
from datarun.cas.index import ChunkIndex
from datarun.cas.packs import PackWriter, PendingChunk, SealedPack
from datarun.errors import ConflictError, LocalIOError, UnsafePathError
from datarun.hashcache import HashCache
from datarun.layout import pack_key, segment_key
from datarun.manifest import ManifestWriter
from datarun.model import DIRECTORY, FILE, SYMLINK, ChunkRef, FileEntry, validate_link_target
from datarun.progress import NO_PROGRESS, Callback
from datarun.store import ObjectStore
from datarun.transfer.localfs import local_io_error, require_utf8, walk_tree
from datarun.transfer.parallel import DEFAULT_WORKERS, Window
from datarun.transfer.readahead import (
    COMPRESS_AHEAD,
    PARALLEL_FROM,
    chunks_with_digests,
    compress_pool,
    fifo_chunks_with_digests,
)
from datarun.transfer.stats import UploadStats

log = logging.getLogger("datarun.transfer")


@dataclass(slots=True)
class PackSlot:
    """Shared by every chunk of the open pack; filled in when the pack is sealed."""

    pack_id: str = ""


ChunkPlacement: TypeAlias = ChunkRef | tuple[PendingChunk, PackSlot]
"""Where a chunk of a file being uploaded lies: a ref into a sealed (or stored) pack, or a place
in the open pack, whose id its shared slot receives when that pack is sealed."""


def _digest_of(placed: ChunkPlacement) -> bytes:
    return placed.digest if isinstance(placed, ChunkRef) else placed[0].digest


@dataclass(slots=True)
class _Draft:
    entry: FileEntry
    chunks: list[ChunkPlacement]

    def ready(self) -> bool:
        return all(isinstance(c, ChunkRef) or c[1].pack_id for c in self.chunks)

    def finish(self) -> FileEntry:
        refs = tuple(
            c
            if isinstance(c, ChunkRef)
            else ChunkRef(c[0].digest, c[1].pack_id, c[0].offset, c[0].stored_size, c[0].size, c[0].compressed)
            for c in self.chunks
        )
        e = self.entry
        return FileEntry(e.path, e.kind, e.size, e.mode, e.mtime_ns, refs, e.target)


class Uploader:
    def __init__(
        self,
        blobs: ObjectStore,
        index: ChunkIndex,
        hashes: HashCache | None,
        spool_dir: Path,
        workers: int = DEFAULT_WORKERS,
        progress: Callback | None = None,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.hashes = hashes
        self.progress = progress or NO_PROGRESS
        self.stats = UploadStats()
        self._packer = PackWriter(
            spool_dir, store_url=blobs.url, open_sink=lambda pack_id: blobs.open_sink(pack_key(pack_id))
        )
        self._slot = PackSlot()
        self._open: dict[bytes, tuple[PendingChunk, PackSlot]] = {}  # chunks in the open pack
        self._sealed: dict[bytes, ChunkRef] = {}  # chunks in packs still uploading
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datarun-pack")
        self._storing: Window[SealedPack, SealedPack] = Window(self._pool, self._store_pack, workers + 1)
        self._drafts: deque[_Draft] = deque()

    # -- dedup and packing ---------------------------------------------------------------

    def _known(self, chunk_digest: bytes) -> ChunkPlacement | None:
        return self._open.get(chunk_digest) or self._sealed.get(chunk_digest) or self.index.lookup(chunk_digest)

    def _add_chunk(
        self,
        chunk: memoryview,
        chunk_digest: bytes | None = None,
        encoded: Future[tuple[bytes | memoryview, bool]] | None = None,
    ) -> ChunkPlacement:
        if chunk_digest is None:
            chunk_digest = digest(chunk)
        known = self._known(chunk_digest)
        if known is not None:
            self.stats.chunks_deduplicated += 1
            return known
        pending = self._packer.add(chunk_digest, chunk, encoded.result() if encoded is not None else None)
        self.stats.chunks_new += 1
        self.stats.bytes_new += pending.size
        self.stats.bytes_stored += pending.stored_size
        placed = (pending, self._slot)
        self._open[chunk_digest] = placed
        if self._packer.full:
            self._seal()
        return placed

    def _seal(self) -> None:
        if self._packer.empty:
            return
        # Wait for a free slot before sealing: an interrupt while waiting then finds the pack
        # still owned by the packer (or in the window), and abort() removes its spool file.
        while self._storing.full():
            self._reap_one()
        sealed = self._packer.seal()
        self._slot.pack_id = sealed.pack_id
        for ref in sealed.refs():
            self._sealed[ref.digest] = ref
        self._slot = PackSlot()
        self._open = {}
        self.stats.packs += 1
        self._storing.submit(sealed)

    def _store_pack(self, sealed: SealedPack) -> SealedPack:
        try:
            if sealed.sink is not None:
                sealed.sink.commit()  # its blocks went up while it filled
            else:
                assert sealed.path is not None
                self.blobs.put(pack_key(sealed.pack_id), sealed.path)
            # The segment is written only once the pack is durable: a segment must never
            # point at bytes that might not exist.
            self.blobs.put(segment_key(sealed.pack_id), sealed.segment())
        except BaseException:
            sealed.drop()
            raise
        if sealed.path is not None:
            sealed.path.unlink(missing_ok=True)
        return sealed

    def _reap_one(self) -> None:
        """Wait for the oldest pack in flight to be stored, then let dedup find it in the index."""
        sealed = self._storing.take()
        refs = sealed.refs()
        self.index.add_segment(sealed.pack_id, refs)
        for ref in refs:
            self._sealed.pop(ref.digest, None)

    # -- files ---------------------------------------------------------------------------

    def _file_chunks(self, abspath: str, st: os.stat_result, rel: str) -> list[ChunkPlacement]:
        key = abspath
        if self.hashes is not None:
            cached = self.hashes.get(key, st)
            if cached is not None:
                refs = [self._known(d) for d, _ in cached]
                if all(r is not None for r in refs):
                    self.stats.chunks_deduplicated += len(refs)
                    return refs  # type: ignore[return-value]
        placed: list[ChunkPlacement] = []
        pairs: list[tuple[bytes, int]] = []
        read = 0
        bar = self.progress.branched(abspath, rel)
        bar.set_size(st.st_size)
        try:
            chunks = chunks_with_digests(abspath, st.st_size)
            for chunk, chunk_digest, encoded in (
                self._compress_ahead(chunks) if st.st_size >= PARALLEL_FROM else ((c, d, None) for c, d in chunks)
            ):
                ref = self._add_chunk(chunk, chunk_digest, encoded)
                placed.append(ref)
                pairs.append((_digest_of(ref), len(chunk)))
                read += len(chunk)
                bar.relative_update(len(chunk))
            after = os.stat(abspath)
        except OSError as err:
            raise local_io_error(err, abspath, "read") from None
        self.stats.bytes_read += read
        if read != st.st_size or after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size:
            raise ConflictError(f"`{rel}` changed while it was being uploaded; upload again once it is stable")
        if self.hashes is not None:
            self.hashes.put(key, st, pairs)
        return placed

    def _compress_ahead(
        self, chunks: Iterator[tuple[memoryview, bytes | None]]
    ) -> Iterator[tuple[memoryview, bytes | None, Future[tuple[bytes | memoryview, bool]] | None]]:
        """Compress the next few new chunks of a big file on other cores, handing them on in order.

        Compression is the slowest step on compressible data (database dumps, CSV), and one core
        does ~290 MB/s. Only chunks the store does not have yet are compressed, so a re-upload of
        a mostly unchanged file costs no compression. Only for files of ``PARALLEL_FROM`` bytes
        or more, whose chunks are owned copies: smaller files yield views into a buffer that the
        chunker reuses, which must not be held past the next chunk.
        """
        window: deque[tuple[memoryview, bytes | None, Future[tuple[bytes | memoryview, bool]] | None]] = deque()
        try:
            for chunk, chunk_digest in chunks:
                job = None
                if chunk_digest is not None and self._known(chunk_digest) is None:
                    job = compress_pool().submit(compress.encode, chunk)
                window.append((chunk, chunk_digest, job))
                if len(window) > COMPRESS_AHEAD:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:
            for _, _, job in window:
                if job is not None:
                    job.cancel()

    def _emit_ready(self, writer: ManifestWriter) -> None:
        while self._drafts and self._drafts[0].ready():
            writer.add(self._drafts.popleft().finish())

    def _fifo_chunks(self, abspath: str, rel: str) -> tuple[list[ChunkPlacement], int]:
        placed: list[ChunkPlacement] = []
        read = 0
        bar = self.progress.branched(abspath, rel)
        try:
            for chunk, chunk_digest, encoded in self._compress_ahead(fifo_chunks_with_digests(abspath)):
                placed.append(self._add_chunk(chunk, chunk_digest, encoded))
                read += len(chunk)
                bar.relative_update(len(chunk))
        except OSError as err:
            raise local_io_error(err, abspath, "read") from None
        self.stats.bytes_read += read
        return placed, read

    def upload_tree(
        self,
        root: Path,
        writer: ManifestWriter,
        *,
        read_fifos: bool = False,
        observe: Callable[[str, str, os.stat_result, str], None] | None = None,
    ) -> None:
        """Upload the folder ``root`` in tree order; ``observe(root, rel, lstat, kind)`` sees each
        entry's stat before it is read (the tree fingerprint of ``transfer.snapshot``).

        With ``read_fifos``, a named pipe is read until its writer closes it and stored as a
        regular file: a producer (``pg_dump -f <fifo>``) then streams straight into the store,
        its writing overlapped with chunking, compression and upload, with no copy on disk.
        """
        root = root.absolute()
        if not root.is_dir():
            if not root.exists():
                raise LocalIOError(f"path `{root}` does not exist; pass an existing folder to --path")
            raise LocalIOError(f"path `{root}` is not a folder; pass a folder to --path")
        self.index.warm(self.hashes.preload(str(root)) if self.hashes is not None else [])
        base = str(root)
        for rel, st, kind in walk_tree(root):
            if observe is not None:
                observe(base, rel, st, kind)
            mode = stat.S_IMODE(st.st_mode)
            if kind == DIRECTORY:
                self.stats.directories += 1
                self._drafts.append(_Draft(FileEntry(rel, DIRECTORY, 0, mode, st.st_mtime_ns), []))
            elif kind == SYMLINK:
                self._add_symlink(root, rel, st)
            elif kind == FILE:
                chunks = self._file_chunks(f"{base}/{rel}", st, rel)
                self.stats.files += 1
                self.stats.bytes_total += st.st_size
                self._drafts.append(_Draft(FileEntry(rel, FILE, st.st_size, mode, st.st_mtime_ns), chunks))
            elif read_fifos and stat.S_ISFIFO(st.st_mode):
                chunks, size = self._fifo_chunks(f"{base}/{rel}", rel)
                self.stats.files += 1
                self.stats.bytes_total += size
                self._drafts.append(_Draft(FileEntry(rel, FILE, size, mode & 0o666, time.time_ns()), chunks))
            else:
                self.stats.skipped.append(rel)
                log.warning("skipping `%s`: not a regular file, folder or symlink", rel)
            self._emit_ready(writer)

    def _add_symlink(self, root: Path, rel: str, st: os.stat_result) -> None:
        target = os.readlink(root / rel)
        require_utf8(str(root / rel), target, "symlink target")
        try:
            validate_link_target(rel, target)
        except UnsafePathError:
            # A link leaving the folder is followed, like `cp -L`, so the bundle is self-contained.
            try:
                real = (root / rel).stat()
            except OSError as err:
                raise local_io_error(err, root / rel, "follow symlink") from None
            if not stat.S_ISREG(real.st_mode):
                raise LocalIOError(
                    f"symlink `{rel}` -> `{target}` points outside the folder to something that is not a "
                    "file; replace it with the data or a link inside the folder"
                ) from None
            chunks = self._file_chunks(str(root / rel), real, rel)
            self.stats.files += 1
            self.stats.bytes_total += real.st_size
            entry = FileEntry(rel, FILE, real.st_size, stat.S_IMODE(real.st_mode), real.st_mtime_ns)
            self._drafts.append(_Draft(entry, chunks))
            return
        self.stats.symlinks += 1
        self._drafts.append(_Draft(FileEntry(rel, SYMLINK, 0, 0o777, st.st_mtime_ns, (), target), []))

    def finish(self, writer: ManifestWriter) -> None:
        """Seal the last pack, wait until every pack is durable, flush the manifest."""
        self._seal()
        while self._storing:
            self._reap_one()
        self._emit_ready(writer)
        assert not self._drafts, "every draft is resolved once all packs are sealed"
        if self.hashes is not None:
            self.hashes.flush()

    def abort(self) -> None:
        self._packer.discard()
        unstored = self._storing.abandon()
        for sealed in unstored:
            sealed.drop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for sealed in unstored:  # and again once no store call runs any more
            sealed.drop()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
