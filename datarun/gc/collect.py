"""Garbage collection: mark what bundle records reach, sweep what stayed unreachable for a grace
period, repack packs that are mostly dead. The protocol and its proof are in FORMAT.md,
"Garbage collection"; :mod:`datarun.gc.guard` is the writers' half.

Ageing uses the collector's own marks rather than object timestamps: an object is swept only if
a mark written at least ``grace`` ago (by this collector's clock) already found it unreferenced.
No backend has to report modification times and no two clocks are compared.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from datarun.errors import ConflictError, DatarunError, IntegrityError, ObjectNotFound, PreconditionFailed
from datarun.gc import guard
from datarun.ids import new_ksuid
from datarun.layout import (
    GC_LOCK_KEY,
    GC_MARKS_PREFIX,
    GC_PLANS_PREFIX,
    INDEX_PREFIX,
    MANIFEST_PREFIX,
    PACK_PREFIX,
    REPOS_PREFIX,
    gc_mark_key,
    gc_plan_key,
    manifest_key,
    object_name,
    pack_key,
    segment_key,
)
from datarun.manifest import read_manifest_records
from datarun.store import ObjectStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class GcOptions:
    grace: float = 24 * 3600.0  # seconds an object must have been unreferenced before it goes
    dry_run: bool = False
    max_unused: float = 0.1  # repack a pack once more than this share of its bytes is dead
    commit_timeout: float = 120.0  # an announced commit unchanged this long is a dead writer's
    workers: int = 8


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    bundles: int
    live_manifests: int
    live_packs: int
    unreferenced_packs: int
    unreferenced_segments: int
    unreferenced_manifests: int
    unreferenced_bytes: int
    deleted_packs: int = 0
    deleted_segments: int = 0
    deleted_manifests: int = 0
    freed_bytes: int = 0
    kept_young: int = 0  # unreferenced, but not yet for the grace period
    rescued: int = 0  # candidates a bundle committed during the sweep took back
    repacked: int = 0
    repack_freed_bytes: int = 0
    waited_commits: int = 0
    reclaimable_after: float | None = None  # unix time at which a gc could take the young ones

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass
class _Live:
    bundles: set[str] = field(default_factory=set)  # bundle record keys
    manifests: set[str] = field(default_factory=set)
    frames: dict[str, dict[int, int]] = field(default_factory=dict)  # pack -> offset -> stored size


def _bundle_keys(meta: ObjectStore) -> list[str]:
    # Every bundle record is a root, including one whose repo record is gone (a commit that
    # raced a repo delete): its data stays until the record itself is removed.
    out = []
    for info in meta.list(REPOS_PREFIX):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[2] == "bundles" and parts[3].endswith(".json"):
            out.append(info.key)
    return out


def _manifest_of(meta: ObjectStore, key: str) -> str:
    try:
        raw, _ = meta.read(key)
        manifest = orjson.loads(raw)["manifest"]
    except ObjectNotFound:
        return ""  # deleted since the listing: no longer a root
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise IntegrityError(
            f"bundle record `{key}` is unreadable, so gc cannot tell what it references; "
            "nothing was deleted. Run `datarun check` and fix the record first"
        ) from None
    if not isinstance(manifest, str):
        raise IntegrityError(f"bundle record `{key}` has no manifest id; nothing was deleted. Run `datarun check`")
    return manifest


def _frames_of(meta: ObjectStore, manifest_id: str) -> dict[str, dict[int, int]]:
    frames: dict[str, dict[int, int]] = {}
    try:
        for raw in read_manifest_records(meta, manifest_id):
            for ref in raw.get("c", ()):
                frames.setdefault(str(ref[1]), {})[int(ref[2])] = int(ref[3])
    except (ObjectNotFound, IntegrityError) as err:
        raise IntegrityError(
            f"live manifest {manifest_id} cannot be read ({err}), so gc cannot tell which packs it needs; "
            "nothing was deleted. Run `datarun check`"
        ) from None
    return frames


def _mark(meta: ObjectStore, keys: Iterable[str], live: _Live, workers: int) -> set[str]:
    """Add the bundles ``keys`` to ``live``; return the packs they newly made live."""
    fresh = [k for k in keys if k not in live.bundles]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        manifests = list(pool.map(lambda k: _manifest_of(meta, k), fresh))
        live.bundles.update(fresh)
        todo = sorted({m for m in manifests if m and m not in live.manifests})
        live.manifests.update(todo)
        newly: set[str] = set()
        for frames in pool.map(lambda m: _frames_of(meta, m), todo):
            for pack, offsets in frames.items():
                if pack not in live.frames:
                    newly.add(pack)
                live.frames.setdefault(pack, {}).update(offsets)
    return newly


def _listing(store: ObjectStore, prefix: str) -> dict[str, int]:
    return {object_name(info.key): info.size for info in store.list(prefix)}


@dataclass(frozen=True)
class _Mark:
    key: str
    time: float
    objects: dict[str, frozenset[str]]  # "packs" / "segments" / "manifests" -> ids unreferenced then


def _read_marks(meta: ObjectStore) -> list[_Mark]:
    out = []
    for info in meta.list(GC_MARKS_PREFIX):
        try:
            raw, _ = meta.read(info.key)
            data = orjson.loads(raw)
            objects = {k: frozenset(map(str, data.get(k, []))) for k in ("packs", "segments", "manifests")}
            out.append(_Mark(info.key, float(data["time"]), objects))
        except ObjectNotFound:
            continue
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # An unreadable mark only costs this run's ageing; it is never a reason to delete.
            continue
    return out


def _acquire(meta: ObjectStore, who: str) -> None:
    try:
        meta.put_if_absent(GC_LOCK_KEY, orjson.dumps({"format": 1, "by": who, "time": time.time()}))
    except PreconditionFailed:
        try:
            raw, _ = meta.read(GC_LOCK_KEY)
            holder = orjson.loads(raw)
        except (ObjectNotFound, orjson.JSONDecodeError):
            holder = {}
        raise ConflictError(
            f"another gc holds `{GC_LOCK_KEY}` in `{meta.url}` (by {holder.get('by', '?')}); wait for it, or if it "
            "died, run `datarun gc --break-lock` (a dead gc leaves only garbage; the next one finishes its work)"
        ) from None


def break_lock(meta: ObjectStore) -> None:
    meta.delete(GC_LOCK_KEY)


def _await_commits(meta: ObjectStore, timeout: float, log: Log) -> int:
    """Wait until every commit announced now is withdrawn; remove those that stay unchanged for
    ``timeout`` seconds (their writer died between announcing and withdrawing)."""
    pending = guard.list_commits(meta)
    seen = len(pending)
    first = time.monotonic()
    while pending:
        now = {info: etag for info, etag in guard.list_commits(meta).items() if info in pending}
        pending = {k: e for k, e in now.items() if pending[k] == e}
        if pending and time.monotonic() - first >= timeout:
            for key in pending:
                log(f"removing stale commit announcement {key} (unchanged for {timeout:.0f}s)")
                meta.delete(key)
            break
        if pending:
            time.sleep(min(0.05, timeout / 10 or 0.01))
    return seen


def _drop_dead_plans(meta: ObjectStore, who: str, log: Log) -> None:
    """Plans left by a collector that died (we hold the lock, so no live one owns them). Their
    sweep may be half done; advancing the generation makes every writer that began before this
    check the packs it reuses still exist, so dropping the plan cannot let a commit through."""
    dead = [info.key for info in meta.list(GC_PLANS_PREFIX)]
    if not dead:
        return
    for key in dead:
        log(f"removing the plan {key} of a gc that did not finish")
        meta.delete(key)
    guard.bump_generation(meta, who)


def _delete_all(store: ObjectStore, keys: list[str], workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(store.delete, keys))


def collect(
    meta: ObjectStore,
    blobs: ObjectStore,
    options: GcOptions = GcOptions(),
    log: Log = lambda _m: None,
    repack: Callable[[ObjectStore, ObjectStore, dict[str, dict[int, int]], dict[str, int], GcOptions], tuple[int, int]]
    | None = None,
) -> GcReport:
    """One collection; ``repack`` (see :mod:`datarun.gc.repack`) rewrites mostly-dead live packs."""
    who = f"{socket.gethostname()}:{os.getpid()}"
    if not options.dry_run:
        _acquire(meta, who)
    try:
        return _collect(meta, blobs, options, log, who, repack)
    finally:
        if not options.dry_run:
            with contextlib.suppress(DatarunError):
                meta.delete(GC_LOCK_KEY)


def _collect(
    meta: ObjectStore,
    blobs: ObjectStore,
    options: GcOptions,
    log: Log,
    who: str,
    repack: Callable[[ObjectStore, ObjectStore, dict[str, dict[int, int]], dict[str, int], GcOptions], tuple[int, int]]
    | None,
) -> GcReport:
    started = time.time()
    if not options.dry_run:
        _drop_dead_plans(meta, who, log)
    live = _Live()
    # Objects are listed before the roots: anything written after this listing is not a
    # candidate in this run at all, whatever the roots say. Segments before packs: a writer puts
    # a segment only after its pack, so every listed segment's pack is in the pack listing.
    segments = _listing(blobs, INDEX_PREFIX)
    packs = _listing(blobs, PACK_PREFIX)
    manifests = _listing(meta, MANIFEST_PREFIX)
    _mark(meta, _bundle_keys(meta), live, options.workers)
    unref_packs = {p for p in packs if p not in live.frames}
    unref_segments = {s for s in segments if s not in live.frames or s not in packs}
    unref_manifests = {m for m in manifests if m not in live.manifests}
    unref_bytes = sum(packs[p] for p in unref_packs) + sum(manifests[m] for m in unref_manifests)

    marks = _read_marks(meta)
    old: _Mark | None
    if options.grace <= 0:
        now = {"packs": unref_packs, "segments": unref_segments, "manifests": unref_manifests}
        old = _Mark("", started, {k: frozenset(v) for k, v in now.items()})
    else:
        eligible = [m for m in marks if m.time <= started - options.grace]
        old = max(eligible, key=lambda m: m.time) if eligible else None
    chosen_time = old.time if old else started

    def aged(current: set[str], kind: str) -> set[str]:
        return current & old.objects[kind] if old else set()

    doomed_packs = aged(unref_packs, "packs")
    doomed_segments = aged(unref_segments, "segments") | {p for p in doomed_packs if p in segments}
    doomed_manifests = aged(unref_manifests, "manifests")
    young = len(unref_packs - doomed_packs) + len(unref_manifests - doomed_manifests)
    report = GcReport(
        dry_run=options.dry_run,
        bundles=len(live.bundles),
        live_manifests=len(live.manifests),
        live_packs=len(live.frames),
        unreferenced_packs=len(unref_packs),
        unreferenced_segments=len(unref_segments),
        unreferenced_manifests=len(unref_manifests),
        unreferenced_bytes=unref_bytes,
        kept_young=young,
        reclaimable_after=(started + options.grace) if young else None,
    )
    if options.dry_run:
        freed = sum(packs[p] for p in doomed_packs) + sum(manifests[m] for m in doomed_manifests)
        return _replace(
            report,
            deleted_packs=len(doomed_packs),
            deleted_segments=len(doomed_segments),
            deleted_manifests=len(doomed_manifests),
            freed_bytes=freed,
        )

    # Remember what is unreferenced now, so a gc at least `grace` later may take it.
    mark = {
        "format": 1,
        "time": started,
        "by": who,
        "packs": sorted(unref_packs),
        "segments": sorted(unref_segments),
        "manifests": sorted(unref_manifests),
    }
    meta.put_if_absent(gc_mark_key(new_ksuid()), orjson.dumps(mark))
    for m in marks:
        if m.time < chosen_time:
            meta.delete(m.key)

    waited = rescued = 0
    deleted_packs: list[str] = []
    deleted_manifests: list[str] = []
    deleted_segments: list[str] = []
    if doomed_packs or doomed_segments or doomed_manifests:
        plan_id = new_ksuid()
        plan = {
            "format": 1,
            "id": plan_id,
            "by": who,
            "time": time.time(),
            "packs": sorted(doomed_packs),
            "segments": sorted(doomed_segments),
            "manifests": sorted(doomed_manifests),
        }
        meta.put_if_absent(gc_plan_key(plan_id), orjson.dumps(plan))
        guard.bump_generation(meta, who)
        try:
            waited = _await_commits(meta, options.commit_timeout, log)
            # Re-mark: a bundle committed by a writer that looked for plans before ours existed
            # is visible now, and whatever it names is taken back.
            newly = _mark(meta, _bundle_keys(meta), live, options.workers)
            back = (doomed_packs & newly) | (doomed_manifests & live.manifests)
            rescued = len(back)
            doomed_packs -= newly
            doomed_manifests -= live.manifests
            doomed_segments -= newly
            deleted_segments = sorted(doomed_segments)
            deleted_packs = sorted(doomed_packs)
            deleted_manifests = sorted(doomed_manifests)
            # Segments before packs: a segment must never outlive the bytes it describes.
            _delete_all(blobs, [segment_key(s) for s in deleted_segments], options.workers)
            _delete_all(blobs, [pack_key(p) for p in deleted_packs], options.workers)
            _delete_all(meta, [manifest_key(m) for m in deleted_manifests], options.workers)
        finally:
            meta.delete(gc_plan_key(plan_id))
            guard.bump_generation(meta, who)
    repacked = repack_freed = 0
    if repack is not None:
        live_sizes = {p: packs[p] for p in live.frames if p in packs}
        repacked, repack_freed = repack(meta, blobs, live.frames, live_sizes, options)
    freed = sum(packs[p] for p in deleted_packs) + sum(manifests.get(m, 0) for m in deleted_manifests)
    return _replace(
        report,
        deleted_packs=len(deleted_packs),
        deleted_segments=len(deleted_segments),
        deleted_manifests=len(deleted_manifests),
        freed_bytes=freed,
        rescued=rescued,
        waited_commits=waited,
        repacked=repacked,
        repack_freed_bytes=repack_freed,
    )


def _replace(report: GcReport, **changes: object) -> GcReport:
    from dataclasses import replace

    return replace(report, **changes)  # type: ignore[arg-type]
