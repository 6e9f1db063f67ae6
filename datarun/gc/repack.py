"""Repacking: rewrite the live frames of mostly-dead packs into fresh packs (restic's
``--max-unused``). A pack is rewritten only when more than ``max_unused`` of its bytes are
dead, because a repack costs a read and a write of everything still live in it.

The frames are copied verbatim, so no chunk is re-encoded, and every manifest naming an old
pack is rewritten with the new locations (same entries, new id). The bundle record is then
swapped to the new manifest with compare-and-swap: the one change to a bundle record datarun
ever makes, and one a reader cannot observe except through the ``manifest`` field. The old
packs become unreferenced and go at a later gc, after the grace period, so downloads that
already hold the old manifest finish.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson

from datarun.cas.packs import PACK_TARGET_SIZE, PendingChunk, encode_segment, pack_id_of
from datarun.errors import ObjectNotFound, PreconditionFailed
from datarun.gc.collect import GcOptions
from datarun.layout import REPOS_PREFIX, manifest_key, pack_key, segment_key
from datarun.manifest import ManifestWriter, read_manifest
from datarun.model import ChunkRef, FileEntry
from datarun.store import ObjectStore


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def repack_packs(
    meta: ObjectStore,
    blobs: ObjectStore,
    frames: dict[str, dict[int, int]],
    sizes: dict[str, int],
    options: GcOptions,
) -> tuple[int, int]:
    """Repack the live packs whose dead share exceeds ``options.max_unused``; return (packs, bytes freed later)."""
    chosen = sorted(
        p
        for p, offs in frames.items()
        if p in sizes and sizes[p] and 1 - sum(offs.values()) / sizes[p] > options.max_unused
    )
    if not chosen or options.max_unused >= 1.0:
        return 0, 0
    freed = sum(sizes[p] - sum(frames[p].values()) for p in chosen)
    if options.dry_run:
        return len(chosen), freed
    doomed = set(chosen)
    # Which manifests (and so which bundle records) name the chosen packs.
    users: dict[str, list[str]] = {}
    for info in meta.list(REPOS_PREFIX):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[2] == "bundles":
            with contextlib.suppress(ObjectNotFound):
                raw, _ = meta.read(info.key)
                users.setdefault(str(orjson.loads(raw)["manifest"]), []).append(info.key)
    work = Path(tempfile.mkdtemp(prefix="datarun-repack-"))
    try:
        moved: dict[tuple[str, int], ChunkRef] = {}
        affected: list[tuple[str, list[FileEntry]]] = []
        for manifest_id in sorted(users):
            entries = list(read_manifest(meta, manifest_id))
            if any(c.pack in doomed for e in entries for c in e.chunks):
                affected.append((manifest_id, entries))
                for e in entries:
                    for c in e.chunks:
                        if c.pack in doomed:
                            moved[(c.pack, c.offset)] = c
        _write_packs(blobs, moved, work)
        for manifest_id, entries in affected:
            writer = ManifestWriter(work)
            for e in entries:
                chunks = tuple(moved.get((c.pack, c.offset), c) for c in e.chunks)
                writer.add(replace(e, chunks=chunks))
            new_id = writer.finish()
            meta.put(manifest_key(new_id), writer.path)
            writer.path.unlink(missing_ok=True)
            for key in users[manifest_id]:
                _swap_manifest(meta, key, manifest_id, new_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return len(chosen), freed


def _write_packs(blobs: ObjectStore, moved: dict[tuple[str, int], ChunkRef], work: Path) -> None:
    """Copy the frames in ``moved`` into new packs; replace each value with its new location."""
    order = sorted(moved)
    i = 0
    while i < len(order):
        spool = work / "pack"
        table: list[PendingChunk] = []
        keys: list[tuple[str, int]] = []
        offset = 0
        with spool.open("wb") as out:
            while i < len(order) and offset < PACK_TARGET_SIZE:
                ref = moved[order[i]]
                frame = blobs.get_range(pack_key(ref.pack), ref.offset, ref.stored_size)
                out.write(frame)
                table.append(PendingChunk(ref.digest, offset, ref.stored_size, ref.size, ref.compressed))
                keys.append(order[i])
                offset += ref.stored_size
                i += 1
        new_pack = pack_id_of(table)
        blobs.put(pack_key(new_pack), spool)
        blobs.put(segment_key(new_pack), encode_segment(new_pack, table))  # after the pack: §4.2
        for key, c in zip(keys, table, strict=True):
            moved[key] = ChunkRef(c.digest, new_pack, c.offset, c.stored_size, c.size, c.compressed)
        spool.unlink(missing_ok=True)


def _swap_manifest(meta: ObjectStore, key: str, old: str, new: str) -> None:
    for _ in range(5):
        try:
            raw, info = meta.read(key)
        except ObjectNotFound:
            return  # deleted meanwhile: nothing to point at the new manifest
        record = orjson.loads(raw)
        if record.get("manifest") != old:
            return
        record["manifest"] = new
        record["repacked_from"] = [*record.get("repacked_from", []), old]
        try:
            meta.put_if_match(key, _dumps(record), info.etag)
            return
        except (PreconditionFailed, ObjectNotFound):
            continue
