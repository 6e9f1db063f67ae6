"""Bounded-parallel, streaming upload and download of folder trees.

Upload is one pass per file: read -> cut (FastCDC) -> hash (BLAKE3) -> dedup lookup ->
compress-if-worthwhile -> append to a spooled pack. Full packs are handed to a small pool
that makes them durable in the store, then writes their index segment. Memory stays at a few
chunk buffers whatever the file sizes; pack bytes live in a spool file, not in RAM.

Download streams the manifest, groups consecutive chunks into work units of a few MiB,
fetches each unit with coalesced ranged reads, verifies every chunk, and ``pwrite``s into a
temp file that is renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datarun.cas import compress
from datarun.cas.chunker import digest, iter_chunks, iter_stream_chunks
from datarun.cas.index import ChunkIndex
from datarun.cas.packs import (
    PackWriter,
    PendingChunk,
    SealedPack,
    decode_chunk,
    encode_segment,
    pack_key,
    segment_key,
)
from datarun.errors import (
    ConflictError,
    IntegrityError,
    LocalIOError,
    NotFoundError,
    UnsafePathError,
)
from datarun.hashcache import HashCache
from datarun.manifest import ManifestWriter
from datarun.model import DIRECTORY, FILE, SYMLINK, ChunkRef, FileEntry, validate_link_target
from datarun.store import ObjectStore

log = logging.getLogger("datarun.transfer")

UNIT_BYTES = 8 << 20  # stored bytes per download work unit
UNIT_FILES = 512  # small files per download work unit
COALESCE_GAP = 1 << 20  # read through gaps this small rather than issue another request
DEFAULT_WORKERS = 4


class Progress(Protocol):
    """Progress reporting, fsspec-style: the CLI plugs in rich, the API defaults to nothing."""

    def set_total(self, total: int | None) -> None: ...
    def advance(self, amount: int) -> None: ...


class NullProgress:
    def set_total(self, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def local_io_error(err: OSError, path: Path | str, action: str) -> LocalIOError:
    hint = {
        errno.ENOENT: "check that the path exists",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
        errno.ENOSPC: "free some disk space or choose another destination",
        errno.EDQUOT: "free some disk space or raise the quota",
        errno.EROFS: "the filesystem is read-only",
        errno.ENOTDIR: "a path component is a file, not a folder",
    }.get(err.errno or 0, "check the path")
    return LocalIOError(f"cannot {action} `{path}`: {err.strerror or err}; {hint}")


# ---------------------------------------------------------------------------------------
# upload


@dataclass
class UploadStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes_total: int = 0  # plaintext bytes in the bundle
    bytes_read: int = 0  # bytes read from disk (zero for hash-cache hits)
    chunks_new: int = 0
    chunks_deduplicated: int = 0  # chunks the store or this upload already had
    bytes_new: int = 0  # plaintext bytes of chunks the store did not have
    bytes_stored: int = 0  # bytes written to packs (after compression)
    packs: int = 0
    skipped: list[str] = field(default_factory=list)  # sockets, fifos, devices


@dataclass(slots=True)
class _PackSlot:
    """Shared by every chunk of the open pack; filled in when the pack is sealed."""

    pack_id: str = ""


@dataclass(slots=True)
class _Draft:
    entry: FileEntry
    chunks: list[ChunkRef | tuple[PendingChunk, _PackSlot]]

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


def _require_utf8(where: str, text: str, what: str) -> None:
    """Manifests store names as UTF-8 JSON; os.scandir hands undecodable bytes over as surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(where).decode("utf-8", "backslashreplace")
        raise LocalIOError(
            f"the {what} of `{shown}` is not valid UTF-8, and bundles keep names as UTF-8; rename it "
            "(e.g. `convmv -f latin1 -t utf8 --notest`) or leave it out of the folder"
        ) from None


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result, str]]:
    """Yield (relative path, lstat, kind) in tree order: depth first, names sorted."""

    def walk(folder: Path, rel: str) -> Iterator[tuple[str, os.stat_result, str]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise local_io_error(err, folder, "read folder") from None
        for entry in entries:
            path = f"{rel}{entry.name}"
            _require_utf8(entry.path, entry.name, "file name")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                raise local_io_error(err, entry.path, "stat") from None
            if stat.S_ISDIR(st.st_mode):
                yield path, st, DIRECTORY
                yield from walk(Path(entry.path), path + "/")
            elif stat.S_ISREG(st.st_mode):
                yield path, st, FILE
            elif stat.S_ISLNK(st.st_mode):
                yield path, st, SYMLINK
            else:
                yield path, st, "other"

    return walk(root, "")


_READ_AHEAD_CHUNKS = 8
_COMPRESS_AHEAD = 8  # chunks being compressed ahead of the packer: bounds memory to a few chunks
_compress_threads: ThreadPoolExecutor | None = None
_compress_lock = threading.Lock()


def _compress_pool() -> ThreadPoolExecutor:
    """One process-wide pool (zstd releases the GIL), created on first use."""
    global _compress_threads
    with _compress_lock:
        if _compress_threads is None:
            _compress_threads = ThreadPoolExecutor(
                max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="datarun-zstd"
            )
        return _compress_threads


_PARALLEL_FROM = 16 << 20


def _chunks_with_digests(path: str, size: int) -> Iterator[tuple[memoryview, bytes | None]]:
    """Chunks of one file, cut and hashed by a helper thread for big files.

    FastCDC and file reads release the GIL, so cutting the next chunks overlaps with the
    caller compressing and writing the previous ones. The queue bounds memory to a few
    chunks. Small files are not worth a thread.
    """
    if size < _PARALLEL_FROM:
        for chunk in iter_chunks(path, size):
            yield chunk, None
        return
    yield from _hashed_ahead(lambda: iter_chunks(path, size))


def _fifo_chunks_with_digests(path: str) -> Iterator[tuple[memoryview, bytes | None]]:
    """Chunks of what a writer pushes through the named pipe at ``path``, until it closes it."""

    def chunks() -> Iterator[memoryview]:
        with open(path, "rb", buffering=0) as handle:
            yield from iter_stream_chunks(handle)

    yield from _hashed_ahead(chunks)


def _hashed_ahead(source: Callable[[], Iterator[memoryview]]) -> Iterator[tuple[memoryview, bytes | None]]:
    ahead: queue.Queue[tuple[bytes, bytes] | BaseException | None] = queue.Queue(_READ_AHEAD_CHUNKS)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in source():
                if stop.is_set():
                    return
                data = bytes(chunk)  # the view is reused by the chunker once we move on
                ahead.put((data, digest(data)))
            ahead.put(None)
        except BaseException as err:
            ahead.put(err)

    worker = threading.Thread(target=produce, name="datarun-chunker", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield memoryview(item[0]), item[1]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ahead.get_nowait()
            worker.join(0.01)


class Uploader:
    def __init__(
        self,
        blobs: ObjectStore,
        index: ChunkIndex,
        hashes: HashCache | None,
        spool_dir: Path,
        workers: int = DEFAULT_WORKERS,
        progress: Progress | None = None,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.hashes = hashes
        self.progress = progress or NullProgress()
        self.stats = UploadStats()
        self._packer = PackWriter(spool_dir, store_url=blobs.url)
        self._slot = _PackSlot()
        self._open: dict[bytes, tuple[PendingChunk, _PackSlot]] = {}  # chunks in the open pack
        self._sealed: dict[bytes, ChunkRef] = {}  # chunks in packs still uploading
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datarun-pack")
        self._inflight: deque[tuple[Future[None], SealedPack]] = deque()
        self._max_inflight = workers + 1
        self._drafts: deque[_Draft] = deque()

    # -- dedup and packing ---------------------------------------------------------------

    def _known(self, chunk_digest: bytes) -> ChunkRef | tuple[PendingChunk, _PackSlot] | None:
        return self._open.get(chunk_digest) or self._sealed.get(chunk_digest) or self.index.lookup(chunk_digest)

    def _add_chunk(
        self,
        chunk: memoryview,
        chunk_digest: bytes | None = None,
        encoded: Future[tuple[bytes | memoryview, bool]] | None = None,
    ) -> ChunkRef | tuple[PendingChunk, _PackSlot]:
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
        # still owned by the packer (or in _inflight), and abort() removes its spool file.
        while len(self._inflight) >= self._max_inflight:
            self._reap_one()
        sealed = self._packer.seal()
        self._slot.pack_id = sealed.pack_id
        for ref in sealed.refs():
            self._sealed[ref.digest] = ref
        self._slot = _PackSlot()
        self._open = {}
        self.stats.packs += 1
        self._inflight.append((self._pool.submit(self._store_pack, sealed), sealed))

    def _store_pack(self, sealed: SealedPack) -> None:
        try:
            self.blobs.put(pack_key(sealed.pack_id), sealed.path)
            # The segment is written only once the pack is durable: a segment must never
            # point at bytes that might not exist.
            self.blobs.put(segment_key(sealed.pack_id), encode_segment(sealed.pack_id, sealed.chunks))
        finally:
            sealed.path.unlink(missing_ok=True)

    def _reap_one(self) -> None:
        future, sealed = self._inflight.popleft()
        future.result()
        refs = sealed.refs()
        self.index.add_segment(sealed.pack_id, refs)
        for ref in refs:
            self._sealed.pop(ref.digest, None)

    # -- files ---------------------------------------------------------------------------

    def _file_chunks(
        self, abspath: str, st: os.stat_result, rel: str
    ) -> list[ChunkRef | tuple[PendingChunk, _PackSlot]]:
        key = abspath
        if self.hashes is not None:
            cached = self.hashes.get(key, st)
            if cached is not None:
                refs = [self._known(d) for d, _ in cached]
                if all(r is not None for r in refs):
                    self.stats.chunks_deduplicated += len(refs)
                    return refs  # type: ignore[return-value]
        placed: list[ChunkRef | tuple[PendingChunk, _PackSlot]] = []
        pairs: list[tuple[bytes, int]] = []
        read = 0
        try:
            chunks = _chunks_with_digests(abspath, st.st_size)
            for chunk, chunk_digest, encoded in (
                self._compress_ahead(chunks) if st.st_size >= _PARALLEL_FROM else ((c, d, None) for c, d in chunks)
            ):
                ref = self._add_chunk(chunk, chunk_digest, encoded)
                placed.append(ref)
                pairs.append((ref.digest if isinstance(ref, ChunkRef) else ref[0].digest, len(chunk)))
                read += len(chunk)
                self.progress.advance(len(chunk))
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
        a mostly unchanged file costs no compression. Only for files of ``_PARALLEL_FROM`` bytes
        or more, whose chunks are owned copies: smaller files yield views into a buffer that the
        chunker reuses, which must not be held past the next chunk.
        """
        window: deque[tuple[memoryview, bytes | None, Future[tuple[bytes | memoryview, bool]] | None]] = deque()
        try:
            for chunk, chunk_digest in chunks:
                job = None
                if chunk_digest is not None and self._known(chunk_digest) is None:
                    job = _compress_pool().submit(compress.encode, chunk)
                window.append((chunk, chunk_digest, job))
                if len(window) > _COMPRESS_AHEAD:
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

    def _fifo_chunks(self, abspath: str) -> tuple[list[ChunkRef | tuple[PendingChunk, _PackSlot]], int]:
        placed: list[ChunkRef | tuple[PendingChunk, _PackSlot]] = []
        read = 0
        try:
            for chunk, chunk_digest, encoded in self._compress_ahead(_fifo_chunks_with_digests(abspath)):
                placed.append(self._add_chunk(chunk, chunk_digest, encoded))
                read += len(chunk)
                self.progress.advance(len(chunk))
        except OSError as err:
            raise local_io_error(err, abspath, "read") from None
        self.stats.bytes_read += read
        return placed, read

    def upload_tree(self, root: Path, writer: ManifestWriter, *, read_fifos: bool = False) -> None:
        """Upload the folder ``root`` in tree order.

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
                chunks, size = self._fifo_chunks(f"{base}/{rel}")
                self.stats.files += 1
                self.stats.bytes_total += size
                self._drafts.append(_Draft(FileEntry(rel, FILE, size, mode & 0o666, time.time_ns()), chunks))
            else:
                self.stats.skipped.append(rel)
                log.warning("skipping `%s`: not a regular file, folder or symlink", rel)
            self._emit_ready(writer)

    def _add_symlink(self, root: Path, rel: str, st: os.stat_result) -> None:
        target = os.readlink(root / rel)
        _require_utf8(str(root / rel), target, "symlink target")
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
        while self._inflight:
            self._reap_one()
        self._emit_ready(writer)
        assert not self._drafts, "every draft is resolved once all packs are sealed"
        if self.hashes is not None:
            self.hashes.flush()

    def abort(self) -> None:
        self._packer.discard()
        for future, sealed in self._inflight:
            future.cancel()
            sealed.path.unlink(missing_ok=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for _, sealed in self._inflight:
            sealed.path.unlink(missing_ok=True)
        self._inflight.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------
# download


def read_chunk(blobs: ObjectStore, ref: ChunkRef) -> bytes:
    return decode_chunk(ref, blobs.get_range(pack_key(ref.pack), ref.offset, ref.stored_size))


def fetch_chunks(blobs: ObjectStore, refs: list[ChunkRef], owners: list[str] | None = None) -> list[bytes]:
    """Fetch and verify ``refs``, merging nearby frames of a pack into single range reads.

    ``owners`` names the file each ref belongs to, so an integrity error says which file is hit.
    """
    order = sorted(range(len(refs)), key=lambda i: (refs[i].pack, refs[i].offset))
    out: list[bytes] = [b""] * len(refs)
    i = 0
    while i < len(order):
        first = refs[order[i]]
        start, end = first.offset, first.offset + first.stored_size
        j = i + 1
        while j < len(order):
            nxt = refs[order[j]]
            if nxt.pack != first.pack or nxt.offset - end > COALESCE_GAP:
                break
            end = max(end, nxt.offset + nxt.stored_size)
            j += 1
        try:
            span = blobs.get_range(pack_key(first.pack), start, end - start)
        except NotFoundError:
            who = f"`{owners[order[i]]}`: " if owners else ""
            raise IntegrityError(f"{who}pack {first.pack[:16]} is missing from the store") from None
        view = memoryview(span)
        for k in order[i:j]:
            ref = refs[k]
            try:
                out[k] = decode_chunk(ref, bytes(view[ref.offset - start : ref.offset - start + ref.stored_size]))
            except IntegrityError as err:
                raise IntegrityError(f"`{owners[k]}`: {err}" if owners else str(err)) from None
        i = j
    return out


class _OpenFile:
    def __init__(self, entry: FileEntry, final: Path) -> None:
        self.entry = entry
        self.final = final
        self.tmp = final.parent / f".{final.name}.datarun-{secrets.token_hex(4)}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.units_left = 0
        self.lock = threading.Lock()

    def complete(self) -> None:
        # Permission bits only: a hostile manifest must not create setuid/setgid files.
        os.fchmod(self.fd, self.entry.mode & 0o777)
        os.close(self.fd)
        self.fd = -1
        os.utime(self.tmp, ns=(self.entry.mtime_ns, self.entry.mtime_ns))
        os.replace(self.tmp, self.final)

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


@dataclass(slots=True)
class _Piece:
    file: _OpenFile
    refs: list[ChunkRef]
    offset: int  # where the first ref lands in the file


@dataclass
class DownloadStats:
    files: int = 0
    bytes: int = 0


class Downloader:
    def __init__(self, blobs: ObjectStore, workers: int = DEFAULT_WORKERS, progress: Progress | None = None) -> None:
        self.blobs = blobs
        self.workers = workers
        self.progress = progress or NullProgress()
        self.stats = DownloadStats()
        self._made_dirs: set[Path] = set()
        self._open_files: set[_OpenFile] = set()
        self._lock = threading.Lock()

    def _ensure_dir(self, dest: Path, rel_dir: str) -> Path:
        """Create ``dest/rel_dir`` refusing to traverse symlinks, so an existing link in the
        destination cannot redirect writes outside it."""
        target = dest / rel_dir if rel_dir else dest
        if target in self._made_dirs:
            return target
        current = dest
        for part in rel_dir.split("/") if rel_dir else []:
            current = current / part
            if current in self._made_dirs:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                try:
                    current.mkdir(mode=0o755)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise local_io_error(err, current, "create folder") from None
                self._made_dirs.add(current)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(f"refusing to write through symlink `{current}` in the destination")
            if not stat.S_ISDIR(st.st_mode):
                raise LocalIOError(f"`{current}` exists and is not a folder; remove it or pick another destination")
            self._made_dirs.add(current)
        self._made_dirs.add(target)
        return target

    def _run_unit(self, pieces: list[_Piece]) -> None:
        refs = [r for p in pieces for r in p.refs]
        owners = [p.file.entry.path for p in pieces for _ in p.refs]
        datas = fetch_chunks(self.blobs, refs, owners)
        k = 0
        for piece in pieces:
            offset = piece.offset
            for _ in piece.refs:
                data = datas[k]
                k += 1
                try:
                    os.pwrite(piece.file.fd, data, offset)
                except OSError as err:
                    raise local_io_error(err, piece.file.final, "write") from None
                offset += len(data)
                self.progress.advance(len(data))
            self._piece_done(piece.file)

    def _piece_done(self, handle: _OpenFile) -> None:
        with handle.lock:
            handle.units_left -= 1
            done = handle.units_left == 0
        if done:
            try:
                handle.complete()
            except OSError as err:
                raise local_io_error(err, handle.final, "finish") from None
            with self._lock:
                self._open_files.discard(handle)
                self.stats.files += 1
                self.stats.bytes += handle.entry.size

    def download(self, entries: Iterator[FileEntry], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        folders: list[FileEntry] = []
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="datarun-get")
        inflight: deque[Future[None]] = deque()
        unit: list[_Piece] = []
        unit_bytes = 0

        def submit() -> None:
            nonlocal unit, unit_bytes
            if unit:
                while len(inflight) >= self.workers * 2:
                    inflight.popleft().result()
                inflight.append(pool.submit(self._run_unit, unit))
            unit, unit_bytes = [], 0

        try:
            for entry in entries:
                parent, _, name = entry.path.rpartition("/")
                if entry.kind == DIRECTORY:
                    self._ensure_dir(dest, entry.path)
                    folders.append(entry)
                    continue
                folder = self._ensure_dir(dest, parent)
                final = folder / name
                if os.path.islink(final) or os.path.isdir(final):
                    raise ConflictError(f"`{final}` exists as a link or folder; remove it or download elsewhere")
                if entry.kind == SYMLINK:
                    tmp = folder / f".{name}.datarun-{secrets.token_hex(4)}"
                    os.symlink(entry.target, tmp)
                    os.replace(tmp, final)
                    continue
                handle = _OpenFile(entry, final)
                with self._lock:
                    self._open_files.add(handle)
                pieces: list[_Piece] = []
                offset = 0
                current: list[ChunkRef] = []
                current_offset = 0
                current_bytes = 0
                for ref in entry.chunks:
                    if current and current_bytes + ref.stored_size > UNIT_BYTES:
                        pieces.append(_Piece(handle, current, current_offset))
                        current, current_offset, current_bytes = [], offset, 0
                    current.append(ref)
                    current_bytes += ref.stored_size
                    offset += ref.size
                pieces.append(_Piece(handle, current, current_offset))
                handle.units_left = len(pieces)
                for piece in pieces:
                    piece_bytes = sum(r.stored_size for r in piece.refs)
                    if unit and (unit_bytes + piece_bytes > UNIT_BYTES or len(unit) >= UNIT_FILES):
                        submit()
                    unit.append(piece)
                    unit_bytes += piece_bytes
            submit()
            while inflight:
                inflight.popleft().result()
            # Folder modes and times last: writing files into them would change the mtimes.
            for folder_entry in reversed(folders):
                path = dest / folder_entry.path
                os.chmod(path, folder_entry.mode & 0o777)
                os.utime(path, ns=(folder_entry.mtime_ns, folder_entry.mtime_ns))
        except BaseException:
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                leftovers = list(self._open_files)
            for handle in leftovers:
                handle.abandon()
            raise
        finally:
            pool.shutdown(wait=True)


def stream_entry(
    blobs: ObjectStore, entry: FileEntry, sink: Callable[[bytes], object], workers: int = DEFAULT_WORKERS
) -> int:
    """Hand the bytes of one file to ``sink`` in order (a pipe's ``write``, say); return the size.

    Units of about ``UNIT_BYTES`` are fetched and verified on ``workers`` threads, at most
    ``workers + 1`` ahead of the one being written, so memory stays at a few units whatever the
    file's size and a slow reader slows the fetching instead of filling memory. Nothing is
    written to disk: a consumer such as ``pg_restore`` starts while the rest is still arriving.
    """
    units: list[list[ChunkRef]] = []
    current: list[ChunkRef] = []
    current_bytes = 0
    for ref in entry.chunks:
        if current and current_bytes + ref.stored_size > UNIT_BYTES:
            units.append(current)
            current, current_bytes = [], 0
        current.append(ref)
        current_bytes += ref.stored_size
    if current:
        units.append(current)
    written = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datarun-stream") as pool:
        inflight: deque[Future[list[bytes]]] = deque()
        try:
            for unit in units:
                inflight.append(pool.submit(fetch_chunks, blobs, unit, [entry.path] * len(unit)))
                if len(inflight) > workers:
                    written += _drain_one(inflight, sink)
            while inflight:
                written += _drain_one(inflight, sink)
        finally:
            for future in inflight:
                future.cancel()
    if written != entry.size:
        raise IntegrityError(f"`{entry.path}`: its chunks hold {written} bytes, the manifest says {entry.size}")
    return written


def _drain_one(inflight: deque[Future[list[bytes]]], sink: Callable[[bytes], object]) -> int:
    written = 0
    for data in inflight.popleft().result():
        sink(data)
        written += len(data)
    return written


def verify_entries(
    blobs: ObjectStore, entries: Iterator[FileEntry], workers: int = DEFAULT_WORKERS, progress: Progress | None = None
) -> tuple[int, int, list[str]]:
    """Read and hash-check every chunk; return (files, bytes, problems naming the files)."""
    bar = progress or NullProgress()
    problems: list[str] = []
    lock = threading.Lock()
    files = 0
    total = 0

    def check(batch: list[FileEntry]) -> None:
        for entry in batch:
            for ref in entry.chunks:
                try:
                    read_chunk(blobs, ref)
                except (IntegrityError, NotFoundError) as err:
                    with lock:
                        problems.append(f"{entry.path}: {err}")
                    break
                bar.advance(ref.size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: deque[Future[None]] = deque()
        batch: list[FileEntry] = []
        batch_bytes = 0
        for entry in entries:
            if entry.kind != FILE:
                continue
            files += 1
            total += entry.size
            batch.append(entry)
            batch_bytes += entry.size
            if batch_bytes >= UNIT_BYTES or len(batch) >= UNIT_FILES:
                if len(futures) >= workers * 2:
                    futures.popleft().result()
                futures.append(pool.submit(check, batch))
                batch, batch_bytes = [], 0
        if batch:
            futures.append(pool.submit(check, batch))
        for future in futures:
            future.result()
    return files, total, sorted(problems)
