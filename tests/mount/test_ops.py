"""BundleOperations driven directly with trio, no kernel: the glue between table and chunks.

Run against a LocalStore (mmap fast path for raw chunks, ChunkSource.get for compressed ones)
and a MemoryStore (every chunk through the thread pool, memory and disk tiers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.mount import fuse_harness
from tests.mount.fuse_harness import TreeEntry, require_fuse

# Fixtures shared with the other mount modules (this folder has no conftest.py of ours).
source_tree = fuse_harness.source_tree
source_description = fuse_harness.source_description

require_fuse(kernel=False)

import pyfuse3  # noqa: E402
import trio  # noqa: E402

from datarun.errors import IntegrityError  # noqa: E402
from datarun.mount.chunks import ChunkSource  # noqa: E402
from datarun.mount.inodes import ROOT_INODE, InodeTable  # noqa: E402
from datarun.mount.ops import BundleOperations  # noqa: E402
from datarun.repo import Client  # noqa: E402
from datarun.store import LocalStore, MemoryStore, ObjectStore  # noqa: E402
from tests.store.counting import CountingStore  # noqa: E402

CTX = pyfuse3.RequestContext()
_R = TypeVar("_R")


@dataclass
class OpsFixture:
    ops: BundleOperations
    table: InodeTable
    source: ChunkSource
    tree: Path
    store: ObjectStore

    def inode_of(self, rel: str) -> int:
        inode = ROOT_INODE
        for part in rel.split("/"):
            inode = trio.run(self.ops.lookup, inode, os.fsencode(part), CTX).st_ino
        return inode

    def open(self, rel: str, flags: int = os.O_RDONLY) -> int:
        return trio.run(self.ops.open, self.inode_of(rel), flags, CTX).fh

    def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(trio.run(self.ops.read, fh, off, size))  # what the kernel is sent


@pytest.fixture(scope="module", params=["local", "memory"])
def served(
    request: pytest.FixtureRequest, source_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpsFixture]:
    tmp_path = tmp_path_factory.mktemp(f"ops-{request.param}")
    store: ObjectStore = (
        LocalStore(tmp_path / "store") if request.param == "local" else MemoryStore(f"ops-{secrets.token_hex(6)}")
    )
    client = Client(store, cache_dir=tmp_path / "client-cache")
    client.create_repo("ops")
    bundle = client.upload("ops", source_tree, "ops test").bundle
    table = InodeTable.build(client.list_records(bundle), tmp_path / "inodes.sqlite")
    disk = None if request.param == "local" else tmp_path / "chunk-cache"
    source = ChunkSource(client.blobs, disk, memory_bytes=16 << 20, disk_bytes=64 << 20, workers=4)
    assert (source.mapped is not None) == (request.param == "local")
    ops = BundleOperations(table, source, None, prefetch=4)
    try:
        yield OpsFixture(ops, table, source, source_tree, store)
    finally:
        source.close()
        table.close()
        client.close()


def _fuse_errno(excinfo: pytest.ExceptionInfo[pyfuse3.FUSEError]) -> int:
    return int(excinfo.value.errno)


def test_lookup_and_getattr_describe_every_entry(served: OpsFixture, source_description: dict[str, TreeEntry]) -> None:
    assert served.table.file_count == sum(1 for e in source_description.values() if e.kind == "f")
    for rel, want in source_description.items():
        inode = served.inode_of(rel)
        attr = trio.run(served.ops.getattr, inode, CTX)
        assert attr.st_ino == inode
        if want.kind == "f":
            assert stat.S_ISREG(attr.st_mode), rel
            assert attr.st_size == want.size, rel
            assert stat.S_IMODE(attr.st_mode) == want.mode, rel
            assert attr.st_mtime_ns == want.mtime_ns, rel
        elif want.kind == "d":
            assert stat.S_ISDIR(attr.st_mode), rel
        else:
            assert stat.S_ISLNK(attr.st_mode), rel
            assert attr.st_size == len(os.fsencode(want.target)), rel
    root = trio.run(served.ops.getattr, ROOT_INODE, CTX)
    assert stat.S_ISDIR(root.st_mode)
    nested = served.inode_of("nested/a")
    assert trio.run(served.ops.lookup, nested, b".", CTX).st_ino == nested
    assert trio.run(served.ops.lookup, nested, b"..", CTX).st_ino == served.inode_of("nested")


def test_reads_at_random_offsets_match_the_source(served: OpsFixture) -> None:
    rng = random.Random(11)
    for rel in ("big.bin", "text/log.txt", "data/medium-b.bin", "data/small-003.bin", "one.bin"):
        want = (served.tree / rel).read_bytes()
        fh = served.open(rel)
        for _ in range(60):
            off = rng.randrange(len(want) + 1)
            size = rng.choice([1, 4096, 131072, rng.randrange(1, 3 << 20)])
            assert served.read(fh, off, size) == want[off : off + size], (rel, off, size)
        assert served.read(fh, 0, len(want)) == want
        # Past the end: nothing; across the end: only what exists.
        assert served.read(fh, len(want), 4096) == b""
        assert served.read(fh, len(want) + 12345, 4096) == b""
        assert served.read(fh, max(len(want) - 5, 0), 4096) == want[-5:]
        assert served.read(fh, 0, 0) == b""
        trio.run(served.ops.release, fh)
    fh = served.open("empty.bin")
    assert served.read(fh, 0, 4096) == b""
    trio.run(served.ops.release, fh)


def test_a_released_handle_is_ebadf(served: OpsFixture) -> None:
    fh = served.open("one.bin")
    trio.run(served.ops.release, fh)
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        served.read(fh, 0, 1)
    assert _fuse_errno(excinfo) == errno.EBADF


@pytest.mark.parametrize(
    "flags",
    [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREAT],
)
def test_opening_for_write_is_erofs(served: OpsFixture, flags: int) -> None:
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        served.open("data/medium-a.bin", flags)
    assert _fuse_errno(excinfo) == errno.EROFS


def test_opening_a_folder_as_a_file_is_refused(served: OpsFixture) -> None:
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        served.open("data")
    assert _fuse_errno(excinfo) == errno.EISDIR


def test_readlink(served: OpsFixture) -> None:
    assert trio.run(served.ops.readlink, served.inode_of("link"), CTX) == b"data/medium-a.bin"
    assert trio.run(served.ops.readlink, served.inode_of("dirlink"), CTX) == b"nested/a"
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        trio.run(served.ops.readlink, served.inode_of("one.bin"), CTX)
    assert _fuse_errno(excinfo) == errno.EINVAL


def test_missing_names_and_inodes_are_enoent(served: OpsFixture) -> None:
    for parent, name in ((ROOT_INODE, b"nope"), (served.inode_of("data"), b"small-999.bin"), (ROOT_INODE, b"Big.bin")):
        with pytest.raises(pyfuse3.FUSEError) as excinfo:
            trio.run(served.ops.lookup, parent, name, CTX)
        assert _fuse_errno(excinfo) == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        trio.run(served.ops.getattr, served.table.node_count + 1000, CTX)
    assert _fuse_errno(excinfo) == errno.ENOENT


def test_opendir_of_a_file_is_enotdir(served: OpsFixture) -> None:
    with pytest.raises(pyfuse3.FUSEError) as excinfo:
        trio.run(served.ops.opendir, served.inode_of("one.bin"), CTX)
    assert _fuse_errno(excinfo) == errno.ENOTDIR


@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_children_pages_cover_every_child_in_order(served: OpsFixture, limit: int) -> None:
    for rel in ("", "data", "nested/a", "empty-dir"):
        inode = served.inode_of(rel) if rel else ROOT_INODE
        expected = sorted(os.listdir(served.tree / rel)) if rel else sorted(os.listdir(served.tree))
        seen: list[int] = []
        names: list[str] = []
        after = 0
        while page := served.table.children(inode, after, limit):
            assert len(page) <= limit
            for node in page:
                assert node.parent == inode
                seen.append(node.inode)
                names.append(os.fsdecode(node.name))
            after = page[-1].inode
        assert names == expected, rel
        assert seen == sorted(set(seen)), "children come in increasing inode order, each once"
        assert ROOT_INODE not in seen


def test_statfs_counts_the_bundle(served: OpsFixture, source_description: dict[str, TreeEntry]) -> None:
    info = trio.run(served.ops.statfs, CTX)
    assert info.f_files == len(source_description) + 1  # plus the root
    total = sum(e.size for e in source_description.values() if e.kind == "f")
    assert info.f_blocks == (total + 4095) // 4096


def test_chunks_come_from_the_store_once_then_from_the_caches(served: OpsFixture) -> None:
    # medium-a.bin is read by no other test in this module (link points at it, but only readlink).
    want = (served.tree / "data/medium-a.bin").read_bytes()
    before = served.source.stats.store_bytes
    fh = served.open("data/medium-a.bin")
    assert served.read(fh, 0, len(want)) == want
    fetched = served.source.stats.store_bytes
    if served.source.mapped is not None:
        assert fetched == before, "raw chunks of a local store are served from the mapped packs"
    else:
        assert fetched - before >= len(want)
    assert served.read(fh, 0, len(want)) == want
    assert served.source.stats.store_bytes == fetched, "a second read is served from the caches"


def test_an_unreadable_disk_cache_entry_does_not_escape_as_a_raw_oserror(tmp_path: Path) -> None:
    # A cache file that cannot be read (failing disk, wrong owner; here: a folder in its place)
    # must cost a refetch or an EIO. Any other exception escapes pyfuse3's request handler and
    # ends pyfuse3.main(): the whole mount would go down for one bad cache file.
    src = tmp_path / "src"
    src.mkdir()
    want = random.Random(4).randbytes(600 << 10)
    (src / "f.bin").write_bytes(want)
    client = Client(MemoryStore(f"ops-{secrets.token_hex(6)}"), cache_dir=tmp_path / "client-cache")
    client.create_repo("ops")
    bundle = client.upload("ops", src, "cache test").bundle
    table = InodeTable.build(client.list_records(bundle), tmp_path / "inodes.sqlite")
    cache = tmp_path / "chunk-cache"
    source = ChunkSource(client.blobs, cache, memory_bytes=0, disk_bytes=64 << 20, workers=2)
    ops = BundleOperations(table, source, None, prefetch=0)
    try:
        inode = trio.run(ops.lookup, ROOT_INODE, b"f.bin", CTX).st_ino
        fh = trio.run(ops.open, inode, os.O_RDONLY, CTX).fh
        assert trio.run(ops.read, fh, 0, len(want)) == want  # fills the disk cache
        entries = [p for p in cache.iterdir() if len(p.name) == 64]
        assert entries, "the chunk went to the disk cache"
        for entry in entries:
            entry.unlink()
            entry.mkdir()
        try:
            assert trio.run(ops.read, fh, 0, len(want)) == want
        except pyfuse3.FUSEError as err:
            assert err.errno == errno.EIO
    finally:
        source.close()
        table.close()
        client.close()


def test_a_missing_pack_is_eio_after_one_store_call(tmp_path: Path) -> None:
    # A pack that is gone will not come back: the mount must not retry it (the store's own loop
    # covers transient failures), so the reader gets EIO after exactly one request.
    src = tmp_path / "src"
    src.mkdir()
    want = random.Random(5).randbytes(300 << 10)  # random: stored raw, one chunk, one pack
    (src / "f.bin").write_bytes(want)
    local = LocalStore(tmp_path / "store")
    client = Client(local, cache_dir=tmp_path / "client-cache")
    client.create_repo("ops")
    bundle = client.upload("ops", src, "missing pack").bundle
    packs = [info.key for info in local.list("packs/")]
    assert len(packs) == 1
    local.delete(packs[0])
    table = InodeTable.build(client.list_records(bundle), tmp_path / "inodes.sqlite")
    counted = CountingStore(local)
    source = ChunkSource(counted, None, memory_bytes=16 << 20, workers=2)
    assert source.mapped is None, "the wrapper reads through the store, as a cloud store does"
    ops = BundleOperations(table, source, None, prefetch=0)
    try:
        inode = trio.run(ops.lookup, ROOT_INODE, b"f.bin", CTX).st_ino
        fh = trio.run(ops.open, inode, os.O_RDONLY, CTX).fh
        with pytest.raises(pyfuse3.FUSEError) as excinfo:
            trio.run(ops.read, fh, 0, 4096)
        assert _fuse_errno(excinfo) == errno.EIO
        assert counted.calls == Counter(get_range=1)
        # Each later read asks the store again (nothing caches a failure), once.
        for reads in range(2, 6):
            with pytest.raises(pyfuse3.FUSEError) as excinfo:
                trio.run(ops.read, fh, 0, 4096)
            assert _fuse_errno(excinfo) == errno.EIO
            assert counted.calls == Counter(get_range=reads)
    finally:
        source.close()
        table.close()
        client.close()


class _EagerExecutor(ThreadPoolExecutor):
    """A pool whose threads are always quick: ``submit`` hands the future back only once its call
    is done (or after a second, if the call waits for something the submitter holds). What a
    fast pool thread does to the submitter now and then, made certain."""

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Future[_R]:
        future = super().submit(fn, *args, **kwargs)
        with contextlib.suppress(TimeoutError):
            future.exception(timeout=1.0)  # waits; the call's own error stays in the future
        return future


@pytest.mark.parametrize("pack", ["present", "missing"])
def test_a_fetch_that_is_done_before_it_is_registered_does_not_deadlock(tmp_path: Path, pack: str) -> None:
    # The completion callback of a fetch takes the source's lock; registering it under that lock
    # deadlocked the reader whenever the fetch had already finished (a missing pack, once the
    # retries were gone, finishes in microseconds).
    src = tmp_path / "src"
    src.mkdir()
    want = random.Random(6).randbytes(200 << 10)
    (src / "f.bin").write_bytes(want)
    local = LocalStore(tmp_path / "store")
    client = Client(local, cache_dir=tmp_path / "client-cache")
    client.create_repo("ops")
    bundle = client.upload("ops", src, "race").bundle
    if pack == "missing":
        for info in list(local.list("packs/")):
            local.delete(info.key)
    (entry,) = [e for e in client.list_files(bundle) if e.path == "f.bin"]
    source = ChunkSource(CountingStore(local), None, memory_bytes=16 << 20, workers=1)
    source._pool.shutdown()
    source._pool = _EagerExecutor(max_workers=1)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(source.get(entry.chunks[0]))
        except IntegrityError as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)  # daemon: a deadlocked reader must not hang pytest
    reader.start()
    reader.join(10)
    try:
        assert not reader.is_alive(), "the reader deadlocked on the chunk source's lock"
        if pack == "present":
            assert outcome == [want[: entry.chunks[0].size]]
        else:
            assert len(outcome) == 1 and isinstance(outcome[0], IntegrityError)
    finally:
        source.close()
        client.close()
