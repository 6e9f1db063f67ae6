"""The pyfuse3 Operations: thin glue between the kernel, the inode table and the chunks."""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from datarun.errors import DatarunError
from datarun.model import DIRECTORY, FILE, SYMLINK, ChunkRef
from datarun.mount.chunks import ChunkSource
from datarun.mount.inodes import ROOT_INODE, InodeTable, Node

log = logging.getLogger("datarun.mount")

# Bundles are immutable, so the kernel may cache names and attributes for as long as it likes.
CACHE_TIMEOUT = 365 * 24 * 3600.0
_SEQUENTIAL_SLACK = 4 << 20


@dataclass
class _Handle:
    inode: int
    refs: list[ChunkRef]
    starts: list[int]  # file offset where each chunk begins
    size: int
    staged_fd: int = -1
    next_offset: int = 0  # where a sequential reader will read next
    prefetched_to: int = 0  # chunk index up to which read-ahead was requested
    lock: trio.Lock = field(default_factory=trio.Lock)


class BundleOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        table: InodeTable,
        source: ChunkSource | None,
        staged: Path | None = None,
        prefetch: int = 4,
    ) -> None:
        super().__init__()
        self.table = table
        self.source = source
        self.staged = staged
        self.prefetch = prefetch
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._handles: dict[int, _Handle] = {}
        self._fh = itertools.count(1)

    # -- attributes ----------------------------------------------------------------------

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        kind = {DIRECTORY: stat.S_IFDIR, FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK}[node.kind]
        attr.st_ino = node.inode
        attr.st_mode = kind | (node.mode & 0o7777)
        attr.st_nlink = 2 if node.is_dir else 1
        attr.st_size = len(node.target) if node.kind == SYMLINK else node.size
        attr.st_blksize = 1 << 20
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.attr_timeout = CACHE_TIMEOUT
        attr.entry_timeout = CACHE_TIMEOUT
        return attr

    def _node(self, inode: int) -> Node:
        node = self.table.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._attr(self._node(parent_inode))
        if name == b"..":
            return self._attr(self._node(self._node(parent_inode).parent))
        node = self.table.lookup(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind != SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = (self.table.total_size + 4095) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.table.node_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- folders -------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        after = start_id
        while True:
            batch = self.table.children(fh, after)
            if not batch:
                return
            for node in batch:
                if not pyfuse3.readdir_reply(token, node.name, self._attr(node), node.inode):
                    return
                after = node.inode

    # -- files ---------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if node.kind != FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
        refs = self.table.chunks(inode)
        starts = list(itertools.accumulate((r.size for r in refs[:-1]), initial=0)) if refs else []
        handle = _Handle(inode, refs, starts, node.size)
        if self.staged is not None:
            try:
                handle.staged_fd = os.open(self.staged / self.path_of(inode), os.O_RDONLY)
            except OSError as err:
                # Anything but FUSEError escaping a handler ends pyfuse3's main loop: the whole
                # mount would die for one missing staged file.
                log.error("open of staged `%s` failed: %s", self.path_of(inode), err)
                raise pyfuse3.FUSEError(errno.EIO) from None
        fh = next(self._fh)
        self._handles[fh] = handle
        # keep_cache: the content behind an inode never changes, so the page cache stays valid.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None and handle.staged_fd >= 0:
            os.close(handle.staged_fd)

    def path_of(self, inode: int) -> str:
        parts: list[str] = []
        while inode != ROOT_INODE:
            node = self._node(inode)
            parts.append(os.fsdecode(node.name))
            inode = node.parent
        return "/".join(reversed(parts))

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off >= handle.size or size <= 0:
            return b""
        end = min(off + size, handle.size)
        if handle.staged_fd >= 0:
            try:
                return await trio.to_thread.run_sync(os.pread, handle.staged_fd, end - off, off)
            except OSError as err:
                log.error("read of staged `%s` failed: %s", self.path_of(handle.inode), err)
                raise pyfuse3.FUSEError(errno.EIO) from None
        assert self.source is not None
        first = bisect.bisect_right(handle.starts, off) - 1
        last = bisect.bisect_right(handle.starts, end - 1) - 1
        # Kernel read-ahead issues several reads at once and they can arrive out of order, so
        # "sequential" means near the furthest point read so far, not exactly at it.
        sequential = abs(off - handle.next_offset) <= _SEQUENTIAL_SLACK
        handle.next_offset = max(handle.next_offset, end)
        if sequential and self.prefetch > 0:
            # Read-ahead of the following chunks, in parallel, while this read is served.
            upto = min(len(handle.refs), last + 1 + self.prefetch)
            if upto > handle.prefetched_to:
                self.source.prefetch(handle.refs[max(last + 1, handle.prefetched_to) : upto])
                handle.prefetched_to = upto
        pieces = []
        try:
            for index in range(first, last + 1):
                ref = handle.refs[index]
                data: bytes | memoryview | None = self.source.view_now(ref)
                if data is None and not ref.compressed:
                    # Not checked yet: page it in and hash it off the event loop.
                    data = await trio.to_thread.run_sync(self.source.view, ref)
                if data is None:
                    data = self.source.memory.get(ref.digest)
                if data is None:
                    data = await trio.to_thread.run_sync(self.source.get, ref)
                start = handle.starts[index]
                pieces.append(memoryview(data)[max(off - start, 0) : min(end - start, ref.size)])
        except DatarunError as err:
            log.error(
                "read of `%s` failed at chunk %s: %s",
                self.path_of(handle.inode),
                handle.refs[index].digest.hex()[:16],
                err,
            )
            raise pyfuse3.FUSEError(errno.EIO) from None
        # pyfuse3 replies from any contiguous buffer, so one piece goes out as the view itself:
        # straight from the mapped pack (or the cached chunk) to the kernel, with no copy.
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
