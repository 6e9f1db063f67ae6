"""Download, streaming and verification: chunks back out of the store, every one verified.

Download streams the manifest, cuts each file's chunks into work units of a few MiB (small
files share one), fetches each unit with coalesced ranged reads (``cas/reader.py``), and
``pwrite``s into a temp file that is renamed into place once complete. A unit of a large file is
assembled in an aligned buffer instead (raw frames of a local pack are read straight into it) and
written around the page cache (``cas/directio.py``). Streaming hands one file's bytes to a
consumer in order; verification reads everything and keeps only the verdict.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datarun.cas import directio as direct
from datarun.cas.localpacks import LocalPacks
from datarun.cas.reader import read_chunk, read_chunks
from datarun.errors import ConflictError, IntegrityError, LocalIOError, UnsafePathError
from datarun.model import DIRECTORY, FILE, SYMLINK, ChunkRef, FileEntry
from datarun.progress import NO_PROGRESS, Callback
from datarun.store import ObjectStore
from datarun.transfer.localfs import local_io_error
from datarun.transfer.parallel import DEFAULT_WORKERS, batched, bounded_map, run_all
from datarun.transfer.stats import DownloadStats

UNIT_BYTES = 8 << 20  # stored bytes per download work unit
UNIT_FILES = 512  # small files per download work unit


def _stored_size(ref: ChunkRef) -> int:
    return ref.stored_size


def _units_of(entry: FileEntry) -> list[list[ChunkRef]]:
    """A file's chunks cut into runs of about ``UNIT_BYTES`` stored bytes."""
    return list(batched(entry.chunks, UNIT_BYTES, _stored_size))


def _is_link_or_folder(path: Path) -> bool:
    """One lstat: what must not be replaced by a downloaded file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISLNK(mode) or stat.S_ISDIR(mode)


def _process_umask() -> int | None:
    """The umask, read without setting it: ``os.umask`` can only swap it, and another thread
    creating a file in that instant would get the swapped value."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _OpenFile:
    def __init__(
        self, entry: FileEntry, final: Path, tmp: Path, progress: Callback, check_final: bool, umask: int | None
    ) -> None:
        self.entry = entry
        self.final = final
        self.progress = progress
        self.tmp = tmp
        self.check_final = check_final
        self.fd = -1
        self.direct_fd = -1
        self.units_left = 0
        self.lock = threading.Lock()
        mode = entry.mode & 0o777  # permission bits only: a hostile manifest must not create setuid files
        # Created with its final mode when the umask leaves it as it is (as cp does), so most
        # files need no chmod; otherwise owner-only until complete. Writable by the owner
        # either way, since a large file is opened a second time for its direct writes.
        keeps = umask is not None and mode & ~umask == mode and mode & 0o200
        self.create_mode = mode if keeps else 0o600
        self.mode = mode

    def open(self) -> int:
        """Create the temp file on first use, on a worker thread: on ext4 a create costs a few
        hundred microseconds of kernel time (the inode allocator's scan), which one thread
        walking the manifest would otherwise pay for every file in a row. A large file gets its
        full size at once and a second, direct descriptor (``cas/directio.py``)."""
        with self.lock:
            if self.fd < 0:
                if self.check_final and _is_link_or_folder(self.final):
                    raise ConflictError(f"`{self.final}` exists as a link or folder; remove it or download elsewhere")
                try:
                    self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.create_mode)
                    if self.entry.size >= direct.DIRECT_FROM:
                        os.ftruncate(self.fd, self.entry.size)
                        self.direct_fd = direct.open_direct(self.tmp)
                except OSError as err:
                    raise local_io_error(err, self.final, "create") from None
            return self.fd

    def complete(self) -> None:
        self.open()  # an empty file has no chunk that opened it
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        if self.create_mode != self.mode:
            os.fchmod(self.fd, self.mode)
        os.utime(self.fd, ns=(self.entry.mtime_ns, self.entry.mtime_ns))  # by descriptor: no path lookup
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.final)

    def abandon(self) -> None:
        with self.lock:
            self._abandon()

    def _abandon(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.direct_fd = -1
        self.tmp.unlink(missing_ok=True)


@dataclass(slots=True)
class _Piece:
    file: _OpenFile
    refs: list[ChunkRef]
    offset: int  # where the first ref lands in the file
    stored: int  # bytes to fetch for it

    def offsets(self) -> list[int]:
        """Where each ref lands in the file."""
        out, at = [], self.offset
        for ref in self.refs:
            out.append(at)
            at += ref.size
        return out


class Downloader:
    def __init__(self, blobs: ObjectStore, workers: int = DEFAULT_WORKERS, progress: Callback | None = None) -> None:
        self.blobs = blobs
        self.workers = workers
        self.progress = progress or NO_PROGRESS
        self.stats = DownloadStats()
        self._made_dirs: set[Path] = set()
        # Folders this download created, empty when it did: a file in one cannot collide with
        # anything but this download's own entries, so its final path needs no lstat.
        self._fresh_dirs: set[Path] = set()
        self._open_files: set[_OpenFile] = set()
        self._lock = threading.Lock()
        self._direct = True
        self._umask = _process_umask()
        # Temp names: one random part per download and a counter, not a getrandom(2) per file.
        self._tmp_tag = os.urandom(4).hex()
        self._serial = itertools.count()

    def _tmp_name(self, folder: Path, name: str) -> Path:
        return folder / f".{name}.datarun-{self._tmp_tag}-{next(self._serial)}"

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
                    self._fresh_dirs.add(current)
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
        with LocalPacks(self.blobs) as packs:
            rest: list[tuple[_Piece, ChunkRef, int]] = []
            for piece in pieces:
                piece.file.open()
                if not self._write_assembled(piece, packs):
                    rest += zip(itertools.repeat(piece), piece.refs, piece.offsets())
            datas = read_chunks(self.blobs, [r for _, r, _ in rest], [p.file.entry.path for p, _, _ in rest])
            for (piece, _, offset), data in zip(rest, datas, strict=True):
                try:
                    os.pwrite(piece.file.fd, data, offset)
                except OSError as err:
                    raise local_io_error(err, piece.file.final, "write") from None
        for piece in pieces:
            piece.file.progress.relative_update(sum(r.size for r in piece.refs))
            self._piece_done(piece.file)

    def _write_assembled(self, piece: _Piece, packs: LocalPacks) -> bool:
        """Write a piece of a large file from one aligned buffer, its whole blocks direct; False
        (nothing written) for a piece that goes the buffered way."""
        handle = piece.file
        length = sum(r.size for r in piece.refs)
        if handle.direct_fd < 0 or not self._direct or not piece.refs or length > direct.DIRECT_MAX_UNIT:
            return False
        head = piece.offset % direct.ALIGN
        buffer = direct.unit_buffer(head + length)
        owner = handle.entry.path
        fetch: list[tuple[ChunkRef, memoryview]] = []
        at = head
        for ref in piece.refs:
            target = buffer[at : at + ref.size]
            if not packs.read_into(ref, target, owner):
                fetch.append((ref, target))
            at += ref.size
        if fetch:
            datas = read_chunks(self.blobs, [r for r, _ in fetch], [owner] * len(fetch))
            for (_, target), data in zip(fetch, datas, strict=True):
                target[:] = data
        try:
            if not direct.write_span(handle.direct_fd, handle.fd, buffer, head, piece.offset, length):
                self._direct = False  # refused once: the rest of this download writes buffered
        except OSError as err:
            raise local_io_error(err, handle.final, "write") from None
        return True

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

    def _pieces(self, entries: Iterator[FileEntry], dest: Path, folders: list[FileEntry]) -> Iterator[_Piece]:
        """Walk the manifest: make folders and links at once, open each file and hand on its
        pieces. Runs on the caller's thread, pulled as work units free up."""
        for entry in entries:
            parent, _, name = entry.path.rpartition("/")
            if entry.kind == DIRECTORY:
                self._ensure_dir(dest, entry.path)
                folders.append(entry)
                continue
            folder = self._ensure_dir(dest, parent)
            final = folder / name
            if entry.kind == SYMLINK:
                if _is_link_or_folder(final):
                    raise ConflictError(f"`{final}` exists as a link or folder; remove it or download elsewhere")
                tmp = self._tmp_name(folder, name)
                os.symlink(entry.target, tmp)
                os.replace(tmp, final)
                continue
            bar = self.progress.branched(entry.path, str(final))
            bar.set_size(entry.size)
            handle = _OpenFile(
                entry, final, self._tmp_name(folder, name), bar, folder not in self._fresh_dirs, self._umask
            )
            with self._lock:
                self._open_files.add(handle)
            runs = _units_of(entry) or [[]]  # an empty file still gets one piece, which completes it
            handle.units_left = len(runs)
            offset = 0
            for refs in runs:
                yield _Piece(handle, refs, offset, sum(r.stored_size for r in refs))
                offset += sum(r.size for r in refs)

    def download(self, entries: Iterator[FileEntry], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        with os.scandir(dest) as listing:
            if next(listing, None) is None:
                self._fresh_dirs.add(dest)
        folders: list[FileEntry] = []
        units = batched(self._pieces(entries, dest, folders), UNIT_BYTES, lambda p: p.stored, UNIT_FILES)
        try:
            run_all(self._run_unit, units, workers=self.workers, name="datarun-get")
            # Folder modes and times last: writing files into them would change the mtimes.
            for folder_entry in reversed(folders):
                path = dest / folder_entry.path
                os.chmod(path, folder_entry.mode & 0o777)
                os.utime(path, ns=(folder_entry.mtime_ns, folder_entry.mtime_ns))
        except BaseException:
            # run_all has stopped every worker by now, so no write lands after this.
            with self._lock:
                leftovers = list(self._open_files)
            for handle in leftovers:
                handle.abandon()
            raise


def stream_entry(
    blobs: ObjectStore, entry: FileEntry, sink: Callable[[bytes], object], workers: int = DEFAULT_WORKERS
) -> int:
    """Hand the bytes of one file to ``sink`` in order (a pipe's ``write``, say); return the size.

    Units of about ``UNIT_BYTES`` are fetched and verified on ``workers`` threads, at most
    ``workers + 1`` ahead of the one being written, so memory stays at a few units whatever the
    file's size and a slow reader slows the fetching instead of filling memory. Nothing is
    written to disk: a consumer such as ``pg_restore`` starts while the rest is still arriving.
    """

    def fetch(unit: list[ChunkRef]) -> list[bytes]:
        return read_chunks(blobs, unit, [entry.path] * len(unit))

    written = 0
    fetched = bounded_map(fetch, _units_of(entry), workers=workers, ahead=workers + 1, name="datarun-stream")
    with contextlib.closing(fetched):
        for datas in fetched:
            for data in datas:
                sink(data)
                written += len(data)
    if written != entry.size:
        raise IntegrityError(f"`{entry.path}`: its chunks hold {written} bytes, the manifest says {entry.size}")
    return written


def verify_entries(
    blobs: ObjectStore, entries: Iterator[FileEntry], workers: int = DEFAULT_WORKERS, progress: Callback | None = None
) -> tuple[int, int, list[str]]:
    """Read and hash-check every chunk; return (files, bytes, problems naming the files)."""
    bar = progress or NO_PROGRESS
    problems: list[str] = []
    files = 0
    total = 0

    def counted() -> Iterator[FileEntry]:
        nonlocal files, total
        for entry in entries:
            if entry.kind == FILE:
                files += 1
                total += entry.size
                yield entry

    def check(batch: list[FileEntry]) -> list[str]:
        found = []
        for entry in batch:
            for ref in entry.chunks:
                try:
                    read_chunk(blobs, ref)
                except IntegrityError as err:
                    found.append(f"{entry.path}: {err}")
                    break
                bar.relative_update(ref.size)
        return found

    batches = batched(counted(), UNIT_BYTES, lambda e: e.size, UNIT_FILES)
    checked = bounded_map(check, batches, workers=workers, name="datarun-verify")
    with contextlib.closing(checked):
        for found in checked:
            problems += found
    return files, total, sorted(problems)
