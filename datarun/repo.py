"""The Python API that the CLI, the sidecars and notebooks all use.

    from datarun.repo import connect
    client = connect()                       # the default store, or connect("file:///data")
    client.create_repo("images", "raw camera frames")
    result = client.upload("images", "./frames", message="day 1", label="latest")
    client.download("images", "./copy", label="latest")

Store layout (see FORMAT.md): metadata (repos, bundles, labels, manifests) lives in the
metadata store and chunk data (packs, index segments) in the blob store; they are the same
store unless configured apart. A bundle record is written last and create-only, so a bundle
is visible only once every byte it names is durable.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from datarun import config as cfg
from datarun.cas.index import ChunkIndex
from datarun.errors import (
    ConflictError,
    IntegrityError,
    LocalIOError,
    NotFoundError,
    ObjectNotFound,
    PreconditionFailed,
    UsageError,
)
from datarun.gc import guard as gc_guard
from datarun.hashcache import HashCache
from datarun.ids import is_ksuid, new_ksuid
from datarun.manifest import ManifestWriter, manifest_key, read_manifest, read_manifest_records, tree_key
from datarun.model import (
    FILE,
    FORMAT_VERSION,
    Bundle,
    BundleRef,
    FileEntry,
    Label,
    Provenance,
    Repo,
    RunRecord,
    validate_label_name,
    validate_relpath,
    validate_repo_name,
)
from datarun.store import ObjectStore, open_store
from datarun.summary import TransferSummary
from datarun.transfer import (
    DEFAULT_WORKERS,
    Downloader,
    Progress,
    Uploader,
    UploadStats,
    stream_entry,
    verify_entries,
)

STORE_MARKER = "datarun-store.json"
STORE_FORMAT = 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def _repo_key(repo: str) -> str:
    return f"repos/{repo}/repo.json"


def _bundle_key(repo: str, bundle_id: str) -> str:
    return f"repos/{repo}/bundles/{bundle_id}.json"


def _label_key(repo: str, label: str) -> str:
    return f"repos/{repo}/labels/{label}.json"


def _history_key(repo: str, label: str, seq: int) -> str:
    return f"repos/{repo}/label-history/{label}/{seq:012d}.json"


@dataclass(frozen=True)
class UploadResult:
    bundle: Bundle
    stats: UploadStats
    label: Label | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class DiffEntry:
    path: str
    change: str  # "added", "removed" or "modified"
    old: FileEntry | None
    new: FileEntry | None


@dataclass(frozen=True)
class VerifyReport:
    bundle: Bundle
    files: int
    bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _record(key: str, raw: bytes) -> Any:
    """A metadata record, refused if it is not JSON or a newer datarun wrote it."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise IntegrityError(f"record `{key}` is corrupt: {err}") from None
    if not isinstance(record, dict):
        raise IntegrityError(f"record `{key}` is corrupt: not a JSON object")
    version = record.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError(f"record `{key}` is corrupt: its `format` is {version!r}")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"record `{key}` has format v{version}, newer than this datarun reads (v{FORMAT_VERSION}); upgrade datarun"
        )
    return record


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
        self._index: ChunkIndex | None = None
        self._format_checked = False

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        self.meta.close()
        if self.blobs is not self.meta:
            self.blobs.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records -------------------------------------------------------------------------

    def _read_record(self, key: str, missing: str) -> Any:
        """One JSON record; ``missing`` is the not-found message (name the thing, say the fix)."""
        self._check_read_format()
        try:
            raw, _ = self.meta.read(key)
        except ObjectNotFound:
            raise NotFoundError(missing) from None
        return _record(key, raw)

    def _read_records(self, prefix: str) -> Iterator[Any]:
        self._check_read_format()
        for info in self.meta.list(prefix):
            raw, _ = self.meta.read(info.key)
            yield _record(info.key, raw)

    def _check_read_format(self) -> None:
        # Readers check the store marker too, once per client: a store written by a newer format
        # must be refused before its records are misread, not only before they are written.
        if not self._format_checked:
            self._check_format(create=False)
            self._format_checked = True

    # -- store marker --------------------------------------------------------------------

    def _check_format(self, create: bool) -> None:
        try:
            raw, _ = self.meta.read(STORE_MARKER)
        except ObjectNotFound:
            if not create:
                return
            with contextlib.suppress(PreconditionFailed):  # another writer created it first
                self.meta.put_if_absent(STORE_MARKER, _dumps({"format": "datarun-store", "version": STORE_FORMAT}))
            return
        version = orjson.loads(raw).get("version")
        if version != STORE_FORMAT:
            raise UsageError(
                f"store `{self.meta.url}` uses format v{version}; this datarun reads v{STORE_FORMAT}. Upgrade datarun."
            )

    # -- repos ---------------------------------------------------------------------------

    def create_repo(self, name: str, description: str = "") -> Repo:
        validate_repo_name(name)
        self._check_format(create=True)
        repo = Repo(name, description, _now(), self.author[0])
        try:
            self.meta.put_if_absent(_repo_key(name), _dumps(repo.to_json()))
        except PreconditionFailed:
            raise ConflictError(f"repo `{name}` already exists in `{self.meta.url}`") from None
        return repo

    def get_repo(self, name: str) -> Repo:
        validate_repo_name(name)
        return Repo.from_json(
            self._read_record(
                _repo_key(name),
                f"repo `{name}` not found in `{self.meta.url}`; create it with "
                f"`datarun repo create --repo {name} --description ...`",
            )
        )

    def list_repos(self) -> list[Repo]:
        self._check_read_format()
        repos = []
        for info in self.meta.list("repos/"):
            if info.key.endswith("/repo.json") and info.key.count("/") == 2:
                raw, _ = self.meta.read(info.key)
                repos.append(Repo.from_json(_record(info.key, raw)))
        return repos

    # -- bundles -------------------------------------------------------------------------

    def get_bundle(self, repo: str, bundle_id: str) -> Bundle:
        self.get_repo(repo)
        if not is_ksuid(bundle_id):
            raise UsageError(f"`{bundle_id}` is not a bundle id (27 letters and digits, as printed by upload)")
        return Bundle.from_json(
            self._read_record(
                _bundle_key(repo, bundle_id),
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
        self.get_repo(repo)
        return [Bundle.from_json(raw) for raw in self._read_records(f"repos/{repo}/bundles/")]

    def list_files(self, bundle: Bundle) -> Iterator[FileEntry]:
        return read_manifest(self.meta, bundle.manifest)

    def list_records(self, bundle: Bundle) -> Iterator[dict[str, Any]]:
        """Raw manifest records (paths validated, chunk refs as JSON): for indexing millions."""
        return read_manifest_records(self.meta, bundle.manifest)

    def _chunk_index(self) -> ChunkIndex:
        if self._index is None:
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
        progress: Progress | None = None,
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
        self._check_format(create=True)
        # Read before the index sync: if a gc sweeps after this, the commit re-checks what it reuses.
        generation = gc_guard.read_generation(self.meta)
        index = self._chunk_index()
        index.sync(self.workers * 2)
        spool = self.blobs.staging_dir() or (self.cache_dir / "spool")
        _sweep_stale_spool(spool)
        hashes = HashCache(self.cache_dir) if use_hash_cache else None
        uploader = Uploader(self.blobs, index, hashes, spool, self.workers, progress)
        writer = ManifestWriter(spool)
        try:
            uploader.upload_tree(Path(path), writer, read_fifos=read_fifos)
            uploader.finish(writer)
            manifest_id = writer.finish()
            # Manifests are content-addressed: a plain put of identical bytes is harmless.
            self.meta.put(manifest_key(manifest_id), writer.path)
        except BaseException:
            uploader.abort()
            writer.discard()
            raise
        finally:
            uploader.close()
            writer.path.unlink(missing_ok=True)
            if hashes is not None:
                hashes.close()
        bundle = Bundle(
            id=new_ksuid(),
            repo=repo,
            message=message,
            created=_now(),
            manifest=manifest_id,
            file_count=writer.file_count,
            total_size=writer.total_size,
            provenance=Provenance(
                self.author[0],
                self.author[1],
                cfg.hostname(),
                tuple(inputs),
                run,
                upload_summary(uploader.stats, writer.file_count, time.perf_counter() - started).to_json(),
            ),
        )
        if before_commit is not None:
            before_commit()
        # Written last and create-only: this is the moment the bundle becomes visible. The guard
        # refuses it if a garbage collection took any of its data meanwhile (FORMAT.md, "Garbage collection").
        with gc_guard.commit_guard(self.meta, self.blobs, repo, bundle.id, manifest_id, generation):
            self.meta.put_if_absent(_bundle_key(repo, bundle.id), _dumps(bundle.to_json()))
        moved = self.set_label(repo, label, bundle.id, retries=label_retries) if label else None
        return UploadResult(bundle, uploader.stats, moved, time.perf_counter() - started)

    def download(
        self,
        bundle: Bundle,
        destination: str | Path,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> Downloader:
        dest = Path(destination)
        if dest.exists() and not dest.is_dir():
            raise LocalIOError(f"destination `{dest}` is a file; pass a folder")
        if dest.is_dir() and not force and any(dest.iterdir()):
            raise ConflictError(f"destination `{dest}` is not empty; pass --force to write into it")
        if progress is not None:
            progress.set_total(bundle.total_size)
        downloader = Downloader(self.blobs, self.workers, progress)
        downloader.download(self.list_files(bundle), dest)
        return downloader

    def find_file(self, bundle: Bundle, path: str) -> FileEntry:
        validate_relpath(path.strip("/"))
        wanted = tree_key(path.strip("/"))
        for entry in self.list_files(bundle):
            key = tree_key(entry.path)
            if key == wanted:
                return entry
            if key > wanted:
                break
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
        Downloader(self.blobs, self.workers).download(iter([entry]), dest)
        return final

    def stream_file(self, bundle: Bundle, path: str, sink: Callable[[bytes], object]) -> int:
        """Hand the bytes of the file ``path`` of ``bundle`` to ``sink`` in order, verified,
        without writing them to disk (see ``transfer.stream_entry``); return its size."""
        entry = self.find_file(bundle, path)
        if entry.kind != FILE:
            raise UsageError(f"`{path}` in bundle `{bundle.id}` is a {entry.kind}, not a file")
        return stream_entry(self.blobs, entry, sink, self.workers)

    def verify(self, bundle: Bundle, progress: Progress | None = None) -> VerifyReport:
        if progress is not None:
            progress.set_total(bundle.total_size)
        try:
            files, size, problems = verify_entries(self.blobs, self.list_files(bundle), self.workers, progress)
        except IntegrityError as err:
            return VerifyReport(bundle, 0, 0, [f"manifest: {err}"])
        return VerifyReport(bundle, files, size, problems)

    def diff(self, old: Bundle, new: Bundle) -> Iterator[DiffEntry]:
        """Merge-join two manifests in tree order; memory stays flat for any bundle size."""
        left = self.list_files(old)
        right = self.list_files(new)
        a = next(left, None)
        b = next(right, None)
        while a is not None or b is not None:
            if b is None or (a is not None and tree_key(a.path) < tree_key(b.path)):
                assert a is not None
                yield DiffEntry(a.path, "removed", a, None)
                a = next(left, None)
            elif a is None or tree_key(b.path) < tree_key(a.path):
                yield DiffEntry(b.path, "added", None, b)
                b = next(right, None)
            else:
                if _content(a) != _content(b):
                    yield DiffEntry(a.path, "modified", a, b)
                a = next(left, None)
                b = next(right, None)

    # -- labels --------------------------------------------------------------------------

    def get_label(self, repo: str, name: str) -> Label:
        validate_label_name(name)
        self.get_repo(repo)
        return Label.from_json(
            self._read_record(
                _label_key(repo, name),
                f"label `{name}` not found in repo `{repo}`; list them with `datarun label list --repo {repo}`",
            )
        )

    def list_labels(self, repo: str) -> list[Label]:
        self.get_repo(repo)
        return [Label.from_json(raw) for raw in self._read_records(f"repos/{repo}/labels/")]

    def label_history(self, repo: str, name: str) -> list[Label]:
        validate_label_name(name)
        self.get_repo(repo)
        out = [Label.from_json(raw) for raw in self._read_records(f"repos/{repo}/label-history/{name}/")]
        if not out:
            self.get_label(repo, name)  # raises the not-found error with its hint
        return out

    def set_label(self, repo: str, name: str, bundle_id: str, *, expect: str | None = None, retries: int = 0) -> Label:
        """Point ``name`` at ``bundle_id`` with compare-and-swap.

        Of several concurrent writers exactly one wins each round; a loser retries up to
        ``retries`` times against the new value, then fails with ConflictError. ``expect``
        makes the move conditional on the label's current bundle ("" = must not exist).
        """
        validate_label_name(name)
        self.get_bundle(repo, bundle_id)
        key = _label_key(repo, name)
        for attempt in range(retries + 1):
            try:
                raw, info = self.meta.read(key)
                current: Label | None = Label.from_json(_record(key, raw))
                etag: str | None = info.etag
            except ObjectNotFound:
                current, etag = None, None
            if expect is not None and (current.bundle if current else "") != expect:
                actual = current.bundle if current else "nothing"
                raise ConflictError(f"label `{name}` in repo `{repo}` points at {actual}, not {expect or 'nothing'}")
            if current is not None:
                # Repair history if the previous mover died between its two writes.
                self._append_history(current)
            new = Label(
                repo,
                name,
                bundle_id,
                (current.seq + 1) if current else 1,
                _now(),
                self.author[0],
                current.bundle if current else "",
            )
            try:
                if etag is None:
                    self.meta.put_if_absent(key, _dumps(new.to_json()))
                else:
                    self.meta.put_if_match(key, _dumps(new.to_json()), etag)
            except (PreconditionFailed, ObjectNotFound):
                if attempt < retries:
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise ConflictError(
                    f"label `{name}` in repo `{repo}` was moved by another writer at the same time; "
                    "check `datarun label get` and set it again, or pass --retries"
                ) from None
            self._append_history(new)
            return new
        raise AssertionError("unreachable")

    def _append_history(self, label: Label) -> None:
        with contextlib.suppress(PreconditionFailed):  # already recorded: history is idempotent
            self.meta.put_if_absent(_history_key(label.repo, label.name, label.seq), _dumps(label.to_json()))


def upload_summary(stats: UploadStats, files: int, seconds: float) -> TransferSummary:
    return TransferSummary(
        "upload",
        stats.bytes_total,
        stats.bytes_new,
        stats.bytes_stored,
        stats.chunks_new,
        stats.chunks_deduplicated,
        files,
        seconds,
    )


SPOOL_MAX_AGE = 6 * 3600.0


def _sweep_stale_spool(spool: Path) -> None:
    """Remove spool files left by uploads that were killed (kill -9 skips every cleanup).

    A live upload keeps touching its spool files, so anything untouched for hours is
    garbage; it was never referenced by a visible bundle.
    """
    cutoff = time.time() - SPOOL_MAX_AGE
    try:
        entries = list(os.scandir(spool))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(("pack-", "manifest-", "put-")):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


def _content(entry: FileEntry) -> tuple[object, ...]:
    if entry.kind == FILE:
        return (entry.kind, entry.size, entry.mode, tuple(c.digest for c in entry.chunks))
    return (entry.kind, entry.mode, entry.target)


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
