"""Real FUSE mounts of real bundles: a source tree, stores holding it, and a mount fixture.

Mounts run as `python -m datarun.cli.main ... bundle mount --ready-file F` subprocesses with
their own DATARUN_HOME/DATARUN_CONFIG/DATARUN_CACHE_DIR, so every test sees what a user (or
the sidecar) sees. Without /dev/fuse, fusermount3 or pyfuse3 the tests skip locally and fail
in CI (CI=true), saying what to install.

Test modules import the fixtures they use from here (no conftest.py: this folder is shared).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from datarun.model import FILE, Bundle, ChunkRef
from datarun.repo import Client
from datarun.store import LocalStore

READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
INSTALL_HINT = "install them with `apt-get install fuse3 libfuse3-dev` and `pip install pyfuse3`"
BIG_SIZE = 40 << 20


def fuse_problems(kernel: bool = True) -> list[str]:
    """What is missing to run the mount tests ([] when nothing is)."""
    problems = []
    if importlib.util.find_spec("pyfuse3") is None or importlib.util.find_spec("trio") is None:
        problems.append("the pyfuse3/trio Python packages are missing")
    if kernel:
        if not os.path.exists("/dev/fuse"):
            problems.append("/dev/fuse is missing")
        elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
            problems.append("/dev/fuse is not readable and writable")
        if shutil.which("fusermount3") is None:
            problems.append("fusermount3 is not on PATH")
    return problems


def require_fuse(kernel: bool = True) -> None:
    """Skip (locally) or fail (CI=true) when FUSE cannot be used."""
    problems = fuse_problems(kernel)
    if not problems:
        return
    reason = "; ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE mount tests cannot run: {reason}; {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"FUSE mount tests need FUSE: {reason}", allow_module_level=True)


# -- source trees -------------------------------------------------------------------------


def text_bytes(size: int, seed: int) -> bytes:
    """Compressible but not trivially repetitive text (stored as zstd frames)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "chunk", "bundle", "mount", "inode", "pack", "store"]
    out = bytearray()
    line = 0
    while len(out) < size:
        out += f"{line:08d} {' '.join(rng.choice(words) for _ in range(8))} {rng.randrange(1 << 30)}\n".encode()
        line += 1
    return bytes(out[:size])


def make_tree(root: Path) -> Path:
    """A tree with every kind of entry the mount must serve."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(BIG_SIZE))
    data = root / "data"
    data.mkdir()
    for i in range(20):
        (data / f"small-{i:03d}.bin").write_bytes(rng.randbytes(rng.randrange(1, 300 << 10)))
    (data / "medium-a.bin").write_bytes(rng.randbytes(5 << 20))
    (data / "medium-b.bin").write_bytes(rng.randbytes((3 << 20) + 17))
    (root / "text").mkdir()
    (root / "text" / "log.txt").write_bytes(text_bytes(6 << 20, 1))
    (root / "empty.bin").write_bytes(b"")
    (root / "one.bin").write_bytes(b"x")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "private.txt").write_bytes(b"secret-ish\n")
    (root / "private.txt").chmod(0o600)
    (root / "empty-dir").mkdir()
    deep = root / "nested" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_bytes(b"deep\n" * 1000)
    (root / "ünïcode name with spaces.txt").write_bytes("grüße\n".encode())
    (root / "link").symlink_to("data/medium-a.bin")
    (root / "dirlink").symlink_to("nested/a")
    return root


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TreeEntry:
    kind: str  # "f", "d" or "l"
    mode: int
    size: int
    sha256: str
    target: str
    mtime_ns: int


def describe_tree(root: Path) -> dict[str, TreeEntry]:
    """Every entry under ``root`` by relative path (symlinks not followed)."""
    out: dict[str, TreeEntry] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = TreeEntry("l", mode, 0, "", os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = TreeEntry("d", mode, 0, "", "", 0)
            else:
                out[rel] = TreeEntry("f", mode, st.st_size, sha256_of(path), "", st.st_mtime_ns)
    return out


def walk_listing(root: Path) -> set[str]:
    """Relative paths that ``os.walk`` reports (folders and files, symlinks not followed)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add((Path(folder) / name).relative_to(root).as_posix())
    return found


# -- stores -------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A local store holding one bundle of ``source``."""

    source: Path
    store: Path
    repo: str
    bundle: Bundle
    client: Client

    @property
    def url(self) -> str:
        return f"file://{self.store}"

    def chunks_of(self, rel: str) -> list[ChunkRef]:
        for entry in self.client.list_files(self.bundle):
            if entry.path == rel and entry.kind == FILE:
                return list(entry.chunks)
        raise KeyError(rel)

    def pack_path(self, ref: ChunkRef) -> Path:
        return self.store / "packs" / ref.pack[:2] / ref.pack


def upload_local(source: Path, root: Path, repo: str = "mnt") -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    client = Client(LocalStore(root / "store"), cache_dir=root / "client-cache")
    client.create_repo(repo, "mount tests")
    bundle = client.upload(repo, source, "mount test data", label="latest").bundle
    return Dataset(source, root / "store", repo, bundle, client)


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("source") / "tree")


@pytest.fixture(scope="module")
def source_description(source_tree: Path) -> dict[str, TreeEntry]:
    return describe_tree(source_tree)


@pytest.fixture(scope="module")
def shared_dataset(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    """A dataset shared by the tests of a module that do not damage their store."""
    dataset = upload_local(source_tree, tmp_path_factory.mktemp("shared"))
    yield dataset
    dataset.client.close()


# -- mounting -----------------------------------------------------------------------------


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is mounted on, per /proc/self/mountinfo.

    Unlike ``os.path.ismount`` this also sees a mount whose server died (stat gives ENOTCONN).
    """
    target = os.path.abspath(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    target = target.replace("\n", "\\012")
    with open("/proc/self/mountinfo") as table:
        return any(line.split(" ")[4] == target for line in table)


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: not our child, nobody may reap it)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def fusermount_unmount(path: Path) -> None:
    """`fusermount3 -u`, falling back to a lazy `-uz` (e.g. when something is still open)."""
    if not is_mount_point(path):
        return
    done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0 and is_mount_point(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, timeout=30, check=False)


@dataclass
class Mounted:
    path: Path
    ready_file: Path
    log: Path
    proc: subprocess.Popen[bytes]
    cache_dir: Path
    started: float  # time.monotonic() just before the process was started
    ready_at: float  # time.monotonic() when the ready file appeared
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds_to_ready(self) -> float:
        return self.ready_at - self.started

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def vm_hwm_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def unmount(self, timeout: float = EXIT_TIMEOUT) -> int:
        """`fusermount3 -u` and wait: the exit code of the mount process."""
        fusermount_unmount(self.path)
        return self.proc.wait(timeout=timeout)


def mount_env(home: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATARUN_")}
    env["DATARUN_HOME"] = str(home)
    env["DATARUN_CONFIG"] = str(home / "config.yaml")
    env["DATARUN_CACHE_DIR"] = str(cache)
    return env


class Mounter:
    """Starts mount processes and guarantees that none outlives the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mounts: list[Mounted] = []
        self._count = 0

    def command(self, store_url: str, repo: str, bundle: str, mountpoint: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "datarun.cli.main",
            "--store",
            store_url,
            "bundle",
            "mount",
            "--repo",
            repo,
            "--bundle",
            bundle,
            "--mount",
            str(mountpoint),
            *extra,
        ]

    def fresh_dirs(self) -> tuple[Path, Path, Path]:
        """A new (mount point, home, cache dir) triple."""
        self._count += 1
        base = self.workdir / f"m{self._count}"
        mountpoint, home, cache = base / "mnt", base / "home", base / "cache"
        for folder in (mountpoint, home, cache):
            folder.mkdir(parents=True)
        return mountpoint, home, cache

    def __call__(self, store_url: str, repo: str, bundle: str, *extra: str, timeout: float = READY_TIMEOUT) -> Mounted:
        mountpoint, home, cache = self.fresh_dirs()
        ready = mountpoint.parent / "ready.json"
        log = mountpoint.parent / "mount.log"
        argv = self.command(store_url, repo, bundle, mountpoint, *extra, "--ready-file", str(ready))
        with log.open("wb") as sink:
            started = time.monotonic()
            proc = subprocess.Popen(
                argv, env=mount_env(home, cache), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
            )
        mounted = Mounted(mountpoint, ready, log, proc, cache, started, started, tuple(extra))
        self.mounts.append(mounted)
        deadline = started + timeout
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"mount exited with {proc.returncode} before it was ready:\n{mounted.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mount not ready after {timeout:.0f}s:\n{mounted.log_text()}")
            time.sleep(0.005)
        mounted.ready_at = time.monotonic()
        return mounted

    def close(self) -> None:
        for mounted in self.mounts:
            if mounted.proc.poll() is None or is_mount_point(mounted.path):
                fusermount_unmount(mounted.path)
            try:
                mounted.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                mounted.proc.send_signal(signal.SIGKILL)
                mounted.proc.wait(timeout=EXIT_TIMEOUT)
            if is_mount_point(mounted.path):
                subprocess.run(["fusermount3", "-uz", str(mounted.path)], capture_output=True, check=False)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Call it to mount a bundle; everything it mounted is unmounted and reaped afterwards."""
    require_fuse()
    mounts = Mounter(tmp_path / "mounts")
    try:
        yield mounts
    finally:
        mounts.close()


@pytest.fixture
def shared_mount(mounter: Mounter, shared_dataset: Dataset) -> Mounted:
    """The shared dataset, freshly mounted (cold caches) for this test."""
    return mounter(shared_dataset.url, shared_dataset.repo, shared_dataset.bundle.id)


def run_with_timeout(fn: Callable[[], object], timeout: float) -> tuple[bool, object]:
    """Run ``fn`` in a daemon thread: (finished, its result or the exception it raised)."""
    box: list[object] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as err:
            box.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None
    return True, box[0]
