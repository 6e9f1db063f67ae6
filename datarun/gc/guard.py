"""The writers' half of the garbage-collection protocol (FORMAT.md, "Garbage collection").

An upload calls :func:`read_generation` before it syncs the chunk index and wraps the create
of its bundle record in :func:`commit_guard`. Together they make sure a bundle never becomes
visible while naming a pack or manifest that a collector has deleted or is deleting:

1. the guard announces the commit (``gc/commits/<bundle>.json``) *before* it looks for plans,
   so a collector that writes a plan after that look is bound to see the announcement and wait;
2. it refuses if a sweep plan lists the manifest or any pack the bundle names;
3. if the GC generation moved since the upload began, a sweep may have finished meanwhile, so it
   checks that every named object still exists;
4. just before the create it checks that its announcement is still there (a collector removes
   only announcements it has watched go stale), then creates the record and withdraws it.

It imports nothing above the store and the manifest reader, because the commit path uses it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import orjson

from datarun.errors import ConflictError, IntegrityError, ObjectNotFound, PreconditionFailed
from datarun.layout import GC_COMMITS_PREFIX, GC_GENERATION_KEY, GC_PLANS_PREFIX, gc_commit_key, manifest_key, pack_key
from datarun.manifest import read_manifest_records
from datarun.store import ObjectStore


def read_generation(meta: ObjectStore) -> int:
    """The number of sweeps begun or ended so far (0 on a store that was never collected)."""
    try:
        raw, _ = meta.read(GC_GENERATION_KEY)
    except ObjectNotFound:
        return 0
    try:
        value = orjson.loads(raw)["generation"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise IntegrityError(f"`{GC_GENERATION_KEY}` in `{meta.url}` is corrupt; run `datarun check`") from None
    if not isinstance(value, int):
        raise IntegrityError(f"`{GC_GENERATION_KEY}` in `{meta.url}` is corrupt; run `datarun check`")
    return value


def bump_generation(meta: ObjectStore, who: str) -> int:
    """Advance the generation with compare-and-swap (one collector at a time holds the lock,
    but a CAS costs nothing and keeps a stray second collector from going unnoticed)."""
    for attempt in range(20):
        try:
            raw, info = meta.read(GC_GENERATION_KEY)
            current, etag = int(orjson.loads(raw)["generation"]), info.etag
        except ObjectNotFound:
            current, etag = 0, None
        body = orjson.dumps({"format": 1, "generation": current + 1, "by": who, "time": time.time()})
        try:
            if etag is None:
                meta.put_if_absent(GC_GENERATION_KEY, body)
            else:
                meta.put_if_match(GC_GENERATION_KEY, body, etag)
        except (PreconditionFailed, ObjectNotFound):
            time.sleep(0.01 * (attempt + 1))
            continue
        return current + 1
    raise ConflictError(f"`{GC_GENERATION_KEY}` in `{meta.url}` keeps changing; is another gc running?")


def referenced_objects(meta: ObjectStore, manifest_id: str, repo: str = "") -> set[str]:
    """The pack ids a manifest's chunk refs name. A manifest that is gone was swept (an
    identical tree uploaded before gives the same manifest id): the commit is refused."""
    packs: set[str] = set()
    try:
        for raw in read_manifest_records(meta, manifest_id):
            for ref in raw.get("c", ()):
                packs.add(str(ref[1]))
    except ObjectNotFound:
        raise ConflictError(
            f"upload to repo `{repo}` not committed: garbage collection removed its manifest "
            f"`{manifest_key(manifest_id)}` during the upload; run the upload again"
        ) from None
    return packs


def read_plans(meta: ObjectStore) -> list[dict[str, object]]:
    plans = []
    for info in meta.list(GC_PLANS_PREFIX):
        with contextlib.suppress(ObjectNotFound):  # a finished sweep removed it meanwhile
            raw, _ = meta.read(info.key)
            plans.append(orjson.loads(raw))
    return plans


@contextmanager
def commit_guard(
    meta: ObjectStore, blobs: ObjectStore, repo: str, bundle_id: str, manifest_id: str, generation: int
) -> Iterator[None]:
    """Run the body (the create of the bundle record) only if no collector can take its data."""
    key = gc_commit_key(bundle_id)
    announce = {"format": 1, "repo": repo, "bundle": bundle_id, "manifest": manifest_id, "host": os.uname().nodename}
    meta.put_if_absent(key, orjson.dumps(announce))
    try:
        packs: set[str] | None = None
        for plan in read_plans(meta):
            if packs is None:
                packs = referenced_objects(meta, manifest_id, repo)
            doomed = set(map(str, plan.get("packs", []))) & packs  # type: ignore[call-overload]
            if manifest_id in plan.get("manifests", []) or doomed:  # type: ignore[operator]
                what = f"pack {sorted(doomed)[0]}" if doomed else f"manifest {manifest_id}"
                raise ConflictError(
                    f"upload to repo `{repo}` not committed: garbage collection {plan.get('id')} is deleting "
                    f"{what}, which this bundle reuses; run the upload again"
                )
        if read_generation(meta) != generation:
            # A sweep may have begun and ended during the upload: the index it deduplicated
            # against may name packs that are gone now.
            if packs is None:
                packs = referenced_objects(meta, manifest_id, repo)
            keys = [pack_key(p) for p in sorted(packs)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                present = list(pool.map(blobs.exists, keys))
            missing = [k for k, ok in zip(keys, present, strict=True) if not ok]
            if not meta.exists(manifest_key(manifest_id)):
                missing.append(manifest_key(manifest_id))
            if missing:
                raise ConflictError(
                    f"upload to repo `{repo}` not committed: garbage collection removed `{missing[0]}` "
                    "during the upload; run the upload again"
                )
        if not meta.exists(key):
            raise ConflictError(
                f"upload to repo `{repo}` not committed: a garbage collection took this upload's commit "
                f"announcement `{key}` for a dead writer's; run the upload again"
            )
        yield
    finally:
        with contextlib.suppress(Exception):  # a leftover announcement only delays a gc (it goes stale)
            meta.delete(key)


def list_commits(meta: ObjectStore) -> dict[str, str]:
    """Announced commits: key -> etag (a collector watches that the same object stays)."""
    return {info.key: info.etag for info in meta.list(GC_COMMITS_PREFIX)}
