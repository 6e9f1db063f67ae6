"""Uploading a folder as a bundle: the bytes, the manifest, and the commit that makes it visible.

``Client.upload`` in ``datarun.repo`` is the public entry; this is the plumbing behind it. Two
paths lead to the same commit:

* **unchanged** (the stat-only pass of ``transfer.snapshot``): the folder's walk matches the one
  remembered from its last upload to this store, that upload's manifest is still in the store
  and no garbage collection has run since, so the manifest is reused as it is. No file is read,
  no chunk index is opened and nothing but the commit is written.
* **full**: chunk, dedup and pack every file (``transfer.upload``), then write the manifest.

Either way the bundle record is written last and create-only, under the gc commit guard.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datarun import config as cfg
from datarun.gc import guard as gc_guard
from datarun.ids import new_ksuid
from datarun.layout import bundle_key, manifest_key
from datarun.listing import BundleListing
from datarun.manifest import ManifestWriter
from datarun.model import Bundle, BundleRef, Provenance, RunRecord
from datarun.progress import Callback
from datarun.records import dumps, now
from datarun.results import upload_summary
from datarun.store import ObjectStore

if TYPE_CHECKING:
    from datarun.cas.index import ChunkIndex
from datarun.transfer.snapshot import TreeCache, TreeFingerprint, TreeRecord
from datarun.transfer.stats import UploadStats

SPOOL_MAX_AGE = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where an upload goes: the stores, the local caches and who writes."""

    meta: ObjectStore
    blobs: ObjectStore
    cache_dir: Path
    workers: int
    author: tuple[str, str]
    chunk_index: Callable[[], ChunkIndex]
    listing: Callable[[str], BundleListing]


@dataclass(frozen=True, slots=True)
class Uploaded:
    bundle: Bundle
    stats: UploadStats


def upload_bundle(
    target: UploadTarget,
    repo: str,
    path: Path,
    message: str,
    *,
    inputs: tuple[BundleRef, ...],
    run: RunRecord | None,
    progress: Callback | None,
    use_hash_cache: bool,
    read_fifos: bool,
    before_commit: Callable[[], None] | None,
) -> Uploaded:
    """Store the folder ``path`` and commit it as a new bundle of ``repo`` (see ``Client.upload``)."""
    started = time.perf_counter()
    # Read before anything is reused: if a gc sweeps after this, the commit re-checks what it reuses.
    generation = gc_guard.read_generation(target.meta)
    # A pipe's bytes are not in its stat, so a folder read with --read-fifos is never "unchanged".
    trees = TreeCache(target.cache_dir, target.blobs.url, path) if use_hash_cache and not read_fifos else None
    record = _unchanged(target, trees, generation)
    if record is not None:
        stats = UploadStats(
            files=record.files,
            directories=record.directories,
            symlinks=record.symlinks,
            bytes_total=record.total_size,
            chunks_deduplicated=record.chunks,
            stat_only=True,
        )
        manifest_id, file_count, total_size = record.manifest, record.file_count, record.total_size
    else:
        fingerprint = TreeFingerprint() if trees is not None else None
        stats, manifest_id, file_count, total_size = _store_tree(
            target, path, progress, use_hash_cache, read_fifos, fingerprint
        )
        if trees is not None and fingerprint is not None:
            tree = fingerprint.hexdigest()
            counts = (stats.files, stats.directories, stats.symlinks, stats.chunks_new + stats.chunks_deduplicated)
            trees.save(fingerprint, TreeRecord(tree, manifest_id, file_count, total_size, generation, *counts))
    bundle = Bundle(
        id=new_ksuid(),
        repo=repo,
        message=message,
        created=now(),
        manifest=manifest_id,
        file_count=file_count,
        total_size=total_size,
        provenance=Provenance(
            target.author[0],
            target.author[1],
            cfg.hostname(),
            tuple(inputs),
            run,
            upload_summary(stats, file_count, time.perf_counter() - started).to_json(),
        ),
    )
    if before_commit is not None:
        before_commit()
    # Written last and create-only: this is the moment the bundle becomes visible. The guard
    # refuses it if a garbage collection took any of its data meanwhile (FORMAT.md, "Garbage collection").
    listing = target.listing(repo)
    listing.will_commit(bundle.to_json())  # first, so a visible bundle is always listed
    with gc_guard.commit_guard(target.meta, target.blobs, repo, bundle.id, manifest_id, generation):
        target.meta.put_if_absent(bundle_key(repo, bundle.id), dumps(bundle.to_json()))
    listing.after_commit()
    return Uploaded(bundle, stats)


def _unchanged(target: UploadTarget, trees: TreeCache | None, generation: int) -> TreeRecord | None:
    """The last upload's record if the folder is as that upload saw it and its manifest still
    stands; None means "upload it in full"."""
    if trees is None:
        return None
    record = trees.load()
    if record is None or record.generation != generation:
        return None
    if trees.fingerprint().hexdigest() != record.tree:
        return None
    # One HEAD: a wiped or replaced store at the same URL must not get a bundle naming nothing.
    if not target.meta.exists(manifest_key(record.manifest)):
        trees.forget()
        return None
    return record


def _store_tree(
    target: UploadTarget,
    path: Path,
    progress: Callback | None,
    use_hash_cache: bool,
    read_fifos: bool,
    fingerprint: TreeFingerprint | None,
) -> tuple[UploadStats, str, int, int]:
    """Chunk, dedup and pack every file, then store the manifest; return its id and totals."""
    # Imported here, not at the top: an unchanged re-upload never chunks, hashes or looks up.
    from datarun.hashcache import HashCache
    from datarun.transfer.upload import Uploader

    index = target.chunk_index()
    index.sync(target.workers * 2)
    spool = target.blobs.staging_dir() or (target.cache_dir / "spool")
    sweep_stale_spool(spool)
    hashes = HashCache(target.cache_dir) if use_hash_cache else None
    uploader = Uploader(target.blobs, index, hashes, spool, target.workers, progress)
    writer = ManifestWriter(spool)
    observe = fingerprint.add if fingerprint is not None else None
    try:
        uploader.upload_tree(path, writer, read_fifos=read_fifos, observe=observe)
        uploader.finish(writer)
        manifest_id = writer.finish()
        # Manifests are content-addressed: a plain put of identical bytes is harmless.
        target.meta.put(manifest_key(manifest_id), writer.path)
    except BaseException:
        uploader.abort()
        writer.discard()
        raise
    finally:
        uploader.close()
        writer.path.unlink(missing_ok=True)
        if hashes is not None:
            hashes.close()
    return uploader.stats, manifest_id, writer.file_count, writer.total_size


def sweep_stale_spool(spool: Path) -> None:
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
