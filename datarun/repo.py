"""The Python API that the CLI, the sidecars and notebooks all use.

    from datarun.repo import connect
    client = connect()                       # the default store, or connect("file:///data")
    client.create_repo("images", "raw camera frames")
    result = client.upload("images", "./frames", message="day 1", label="latest")
    client.download(client.resolve("images", label="latest"), "./copy")

This module is a facade: keys are spelled in ``layout``, records are encoded and refused in
``records``, labels move in ``labels``, bytes move in ``transfer`` and ``mount``. It answers
with frozen result objects, never with the machinery behind them.

Store layout (see FORMAT.md): metadata (repos, bundles, labels, manifests) lives in the
metadata store and chunk data (packs, index segments) in the blob store; they are the same
store unless configured apart. A bundle record is written last and create-only, so a bundle
is visible only once every byte it names is durable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datarun import config as cfg, labels
from datarun.bundle_upload import UploadTarget, upload_bundle
from datarun.errors import (
    ConflictError,
    IntegrityError,
    LocalIOError,
    NotFoundError,
    PreconditionFailed,
    UsageError,
)
from datarun.ids import is_ksuid
from datarun.layout import REPOS_PREFIX, bundle_key, bundles_prefix, repo_key
from datarun.listing import BundleListing
from datarun.manifest import DiffEntry, diff_entries, find_entry, read_manifest, read_manifest_records
from datarun.model import (
    FILE,
    Bundle,
    BundleRef,
    FileEntry,
    Label,
    Repo,
    RunRecord,
    validate_label_name,
    validate_relpath,
    validate_repo_name,
)
from datarun.progress import Callback
from datarun.records import Records, dumps, now
from datarun.results import DownloadResult, MountResult, UploadResult, VerifyReport
from datarun.store import ObjectStore, open_store
from datarun.transfer.parallel import DEFAULT_WORKERS

if TYPE_CHECKING:
    from datarun.cache import RunCache
    from datarun.cas.index import ChunkIndex
    from datarun.mount.runner import MountOptions
    from datarun.ranged import RangedReader
    from datarun.runs import RunStore

# The result types are part of this API: `from datarun.repo import UploadResult` keeps working.
__all__ = [
    "Client",
    "DiffEntry",
    "DownloadResult",
    "MountResult",
    "UploadResult",
    "VerifyReport",
    "connect",
]


class Client:
    """A connection to one datarun store (metadata + blobs)."""

    def __init__(
        self,
        meta: ObjectStore,
        blobs: ObjectStore | None = None,
        *,
        cache_dir: Path | None = None,
        author: tuple[str, str] = ("", ""),
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.meta = meta
        self.blobs = blobs or meta
        self.cache_dir = cache_dir or cfg.cache_dir()
        self.author = author
        self.workers = workers
        self.records = Records(meta, workers * 4)  # GETs of small records: round trips, not bandwidth
        self._index: ChunkIndex | None = None
        self._ranged: RangedReader | None = None

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        if self._ranged is not None:
            self._ranged.close()
        self.meta.close()
        if self.blobs is not self.meta:
            self.blobs.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def runs(self) -> RunStore:
        """The run records of this store (datarun.runs): create, update with CAS, get, history."""
        # Imported here: the run records and the cache cost start-up time that `bundle mount`,
        # `download` and `upload` never need.
        from datarun.runs import RunStore

        self.records.check_read_format()
        return RunStore(
            self.meta,
            author=f"{self.author[0]} <{self.author[1]}>" if self.author[1] else self.author[0],
            host=cfg.hostname(),
            before_write=lambda: self.records.check_format(create=True),
        )

    @property
    def cache(self) -> RunCache:
        """The run cache of this store (datarun.cache): entries, lookups, explanations."""
        from datarun.cache import RunCache

        return RunCache(self.meta, self.runs)

    # -- repos ---------------------------------------------------------------------------

    def create_repo(self, name: str, description: str = "") -> Repo:
        validate_repo_name(name)
        self.records.check_format(create=True)
        repo = Repo(name, description, now(), self.author[0])
        try:
            self.meta.put_if_absent(repo_key(name), dumps(repo.to_json()))
        except PreconditionFailed:
            raise ConflictError(f"repo `{name}` already exists in `{self.meta.url}`") from None
        return repo

    def get_repo(self, name: str) -> Repo:
        validate_repo_name(name)
        return Repo.from_json(
            self.records.read(
                repo_key(name),
                f"repo `{name}` not found in `{self.meta.url}`; create it with "
                f"`datarun repo create --repo {name} --description ...`",
            )
        )

    def list_repos(self) -> list[Repo]:
        # One delimiter listing finds the repos: listing `repos/` would page through every
        # bundle, label and history record of the store. A folder without a repo record (one
        # being created, or deleted) is left out.
        keys = (repo_key(folder[len(REPOS_PREFIX) : -1]) for folder in self.meta.list_folders(REPOS_PREFIX))
        return [Repo.from_json(raw) for raw in self.records.read_many(keys)]

    # -- bundles -------------------------------------------------------------------------

    def get_bundle(self, repo: str, bundle_id: str) -> Bundle:
        self.get_repo(repo)
        if not is_ksuid(bundle_id):
            raise UsageError(f"`{bundle_id}` is not a bundle id (27 letters and digits, as printed by upload)")
        return Bundle.from_json(
            self.records.read(
                bundle_key(repo, bundle_id),
                f"bundle `{bundle_id}` not found in repo `{repo}`; list them with `datarun bundle list --repo {repo}`",
            )
        )

    def resolve(self, repo: str, bundle: str | None = None, label: str | None = None) -> Bundle:
        """The bundle named by exactly one of an id or a label."""
        if bool(bundle) == bool(label):
            raise UsageError("name the bundle with exactly one of --bundle or --label")
        if bundle:
            return self.get_bundle(repo, bundle)
        assert label is not None
        return self.get_bundle(repo, self.get_label(repo, label).bundle)

    def list_bundles(self, repo: str) -> list[Bundle]:
        """Whole records, one GET each; ``list_bundle_rows`` reads the listing index instead."""
        self.get_repo(repo)
        return [Bundle.from_json(raw) for raw in self.records.read_all(bundles_prefix(repo))]

    def list_bundle_rows(self, repo: str) -> list[tuple[str, str, str]]:
        """Id, time and message of every bundle, in id order: what `bundle list` prints, from the
        listing index (one GET and one LIST, FORMAT.md §17) when the repo has one."""
        listed = self._listing(repo).read()
        if listed is None:
            return [(b.id, b.created, b.message) for b in self.list_bundles(repo)]  # a store older than the index
        try:
            return [(str(r["id"]), str(r["created"]), str(r.get("message", ""))) for r in listed]
        except (KeyError, TypeError, AttributeError) as err:
            raise IntegrityError(f"malformed bundle record in the listing of repo `{repo}`: {err}") from None

    def _listing(self, repo: str) -> BundleListing:
        return BundleListing(self.meta, repo, self.get_repo(repo).created, self.workers * 4)

    def list_files(self, bundle: Bundle) -> Iterator[FileEntry]:
        return read_manifest(self.meta, bundle.manifest)

    def list_records(self, bundle: Bundle) -> Iterator[dict[str, Any]]:
        """Raw manifest records (paths validated, chunk refs as JSON): for indexing millions."""
        return read_manifest_records(self.meta, bundle.manifest)

    def _chunk_index(self) -> ChunkIndex:
        if self._index is None:
            from datarun.cas.index import ChunkIndex  # sqlite: only an upload that stores chunks needs it

            self._index = ChunkIndex(self.blobs, self.cache_dir / "index")
        return self._index

    def upload(
        self,
        repo: str,
        path: str | Path,
        message: str,
        *,
        label: str | None = None,
        inputs: tuple[BundleRef, ...] = (),
        run: RunRecord | None = None,
        label_retries: int = 5,
        progress: Callback | None = None,
        use_hash_cache: bool = True,
        read_fifos: bool = False,
        before_commit: Callable[[], None] | None = None,
    ) -> UploadResult:
        """Snapshot the folder ``path`` as a new bundle of ``repo``; optionally move ``label``.

        ``read_fifos`` stores what producers write into named pipes in the folder (see
        ``Uploader.upload_tree``). ``before_commit`` runs once every byte is durable and before
        the bundle becomes visible; raising there leaves no bundle (for example, when the
        producer behind a pipe exited non-zero and the bytes read are incomplete).
        """
        started = time.perf_counter()
        self.get_repo(repo)
        if label is not None:
            validate_label_name(label)
        self.records.check_format(create=True)
        target = UploadTarget(
            self.meta, self.blobs, self.cache_dir, self.workers, self.author, self._chunk_index, self._listing
        )
        done = upload_bundle(
            target,
            repo,
            Path(path),
            message,
            inputs=inputs,
            run=run,
            progress=progress,
            use_hash_cache=use_hash_cache,
            read_fifos=read_fifos,
            before_commit=before_commit,
        )
        moved = self.set_label(repo, label, done.bundle.id, retries=label_retries) if label else None
        return UploadResult(done.bundle, done.stats, moved, time.perf_counter() - started)

    def download(
        self,
        bundle: Bundle,
        destination: str | Path,
        *,
        force: bool = False,
        progress: Callback | None = None,
    ) -> DownloadResult:
        started = time.perf_counter()
        dest = Path(destination)
        if dest.exists() and not dest.is_dir():
            raise LocalIOError(f"destination `{dest}` is a file; pass a folder")
        if dest.is_dir() and not force and any(dest.iterdir()):
            raise ConflictError(f"destination `{dest}` is not empty; pass --force to write into it")
        if progress is not None:
            progress.set_size(bundle.total_size)
        from datarun.transfer.download import Downloader

        downloader = Downloader(self.blobs, self.workers, progress)
        downloader.download(self.list_files(bundle), dest)
        stats = downloader.stats
        return DownloadResult(bundle, dest, stats.files, stats.bytes, time.perf_counter() - started)

    def find_file(self, bundle: Bundle, path: str) -> FileEntry:
        validate_relpath(path.strip("/"))
        entry = find_entry(self.list_files(bundle), path.strip("/"))
        if entry is not None:
            return entry
        raise NotFoundError(
            f"file `{path}` not found in bundle `{bundle.id}` of repo `{bundle.repo}`; list them with "
            f"`datarun bundle list files --repo {bundle.repo} --bundle {bundle.id}`"
        )

    def download_file(self, bundle: Bundle, path: str, destination: str | Path, *, force: bool = False) -> Path:
        entry = self.find_file(bundle, path)
        dest = Path(destination)
        final = dest / entry.path
        if final.exists() and not force:
            raise ConflictError(f"`{final}` already exists; pass --force to overwrite it")
        from datarun.transfer.download import Downloader

        Downloader(self.blobs, self.workers).download(iter([entry]), dest)
        return final

    def stream_file(self, bundle: Bundle, path: str, sink: Callable[[bytes], object]) -> int:
        """Hand the bytes of the file ``path`` of ``bundle`` to ``sink`` in order, verified,
        without writing them to disk (see ``transfer.stream_entry``); return its size."""
        entry = self.find_file(bundle, path)
        if entry.kind != FILE:
            raise UsageError(f"`{path}` in bundle `{bundle.id}` is a {entry.kind}, not a file")
        from datarun.transfer.download import stream_entry

        return stream_entry(self.blobs, entry, sink, self.workers)

    def read_chunks(self, entry: FileEntry, first: int, count: int) -> list[bytes | memoryview]:
        """The plaintext of chunks ``first .. first+count`` of the file ``entry``, each hash-checked
        (for readers that cache by chunk: fsspec, ``datarun.open``); see :mod:`datarun.ranged`."""
        return self._ranged_reader().read_chunks(entry, first, count)

    def read_range(self, entry: FileEntry, start: int, length: int) -> bytes:
        """Bytes ``start .. start+length`` of the file ``entry`` (short only at its end), fetching
        only the chunks that overlap the range, each hash-checked before any byte is returned."""
        return self._ranged_reader().read_range(entry, start, length)

    def _ranged_reader(self) -> RangedReader:
        if self._ranged is None:
            # Imported on first use: it brings the mount's chunk source, which uploads and
            # downloads never need, and every CLI start would pay for it.
            from datarun.ranged import RangedReader

            self._ranged = RangedReader(self.blobs)
        return self._ranged

    def verify(self, bundle: Bundle, progress: Callback | None = None) -> VerifyReport:
        if progress is not None:
            progress.set_size(bundle.total_size)
        try:
            from datarun.transfer.download import verify_entries

            files, size, problems = verify_entries(self.blobs, self.list_files(bundle), self.workers, progress)
        except IntegrityError as err:
            return VerifyReport(bundle, 0, 0, [f"manifest: {err}"])
        return VerifyReport(bundle, files, size, problems)

    def mount(
        self,
        bundle: Bundle,
        mountpoint: str | Path,
        options: MountOptions | None = None,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> MountResult:
        """Serve ``bundle`` read-only at ``mountpoint`` until unmounted or signalled (blocks).

        ``options.cache_dir`` defaults to ``mount/`` in the client's cache. With
        ``options.stream`` off, the whole bundle is downloaded into the cache first (once per
        bundle) and served from disk. Needs the ``fuse`` extra (pyfuse3).
        """
        try:
            from datarun.mount.runner import MountOptions, inode_table_for, mount_bundle
        except ImportError as err:
            raise UsageError(f"mounting needs pyfuse3: pip install 'datarun[fuse]' ({err})") from None
        options = options or MountOptions()
        cache = options.cache_dir or self.cache_dir / "mount"
        options = replace(options, cache_dir=cache)
        table = inode_table_for(bundle, lambda: self.list_records(bundle), cache)
        files = table.file_count
        staged = None
        if not options.stream:
            staged = cache / "staged" / bundle.id
            # The marker makes a half-finished staging (a killed mount) download again, not serve.
            done = staged.with_name(bundle.id + ".complete")
            if not done.exists():
                self.download(bundle, staged, force=True)
                done.touch()
        mount_bundle(self.blobs, bundle, table, Path(mountpoint), options, staged, on_ready)
        return MountResult(bundle, Path(mountpoint).absolute(), files)

    def diff(self, old: Bundle, new: Bundle) -> Iterator[DiffEntry]:
        """What changed from ``old`` to ``new``, path by path in tree order (flat memory)."""
        return diff_entries(self.list_files(old), self.list_files(new))

    # -- labels --------------------------------------------------------------------------

    def get_label(self, repo: str, name: str) -> Label:
        validate_label_name(name)
        self.get_repo(repo)
        return labels.get(self.records, repo, name)

    def list_labels(self, repo: str) -> list[Label]:
        self.get_repo(repo)
        return labels.list_all(self.records, repo)

    def label_history(self, repo: str, name: str) -> list[Label]:
        validate_label_name(name)
        self.get_repo(repo)
        return labels.history(self.records, repo, name)

    def set_label(self, repo: str, name: str, bundle_id: str, *, expect: str | None = None, retries: int = 0) -> Label:
        """Point ``name`` at ``bundle_id`` with compare-and-swap (see ``labels.move``)."""
        validate_label_name(name)
        self.get_bundle(repo, bundle_id)
        return labels.move(self.records, repo, name, bundle_id, author=self.author[0], expect=expect, retries=retries)


def connect(
    store: str | None = None,
    *,
    blob_store: str | None = None,
    config: cfg.Config | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Client:
    """Open the store chosen by ``store``, ``DATARUN_STORE``, the config file, or the default."""
    conf = config if config is not None else cfg.load_config()
    choice = cfg.choose_store(store, conf)
    meta = open_store(choice.url, conf.credential)
    blob_url = blob_store or choice.blob_url
    blobs = meta if blob_url == choice.url else open_store(blob_url, conf.credential)
    return Client(meta, blobs, author=cfg.default_author(conf), workers=workers)
