"""``datarun check``: verify a whole store, report every problem with the object it is in.

Layers, cheapest first: every record parses with the right field types; every chunk a live
manifest names is listed by its pack's index segment; every segment decodes and points inside an
existing pack; with ``read_data``, every live frame (or a sample of packs) is read and hashed.

``repair`` only adds: it rebuilds index segments that are missing or corrupt from what the live
manifests say about their pack (a pack is not self-describing, but its chunk table is what the
manifests' refs hold, and the pack id certifies the result), and drops the local index cache so
the next upload re-syncs. It never deletes a store object.
"""

from __future__ import annotations

import itertools
import random
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from datarun.cas.packs import PendingChunk, decode_chunk, decode_segment, encode_segment, pack_id_of
from datarun.errors import DatarunError, IntegrityError, ObjectNotFound
from datarun.ids import is_ksuid
from datarun.layout import INDEX_PREFIX, PACK_PREFIX, REPOS_PREFIX, manifest_key, object_name, pack_key
from datarun.manifest import read_manifest_records
from datarun.model import ChunkRef
from datarun.store import ObjectStore

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Problem:
    kind: str  # record, manifest, index, pack, data
    key: str  # the object the problem is in
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "message": self.message}


@dataclass
class CheckReport:
    records: int = 0
    manifests: int = 0
    segments: int = 0
    packs: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    repaired: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        out = {k: v for k, v in vars(self).items() if k not in ("problems",)}
        out["problems"] = [p.to_json() for p in self.problems]
        out["ok"] = self.ok
        return out


_STR, _INT = (str,), (int,)
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "repo": {"format": _INT, "name": _STR, "created": _STR},
    "bundle": {
        "format": _INT,
        "id": _STR,
        "repo": _STR,
        "created": _STR,
        "manifest": _STR,
        "file_count": _INT,
        "total_size": _INT,
    },
    "label": {"format": _INT, "repo": _STR, "name": _STR, "bundle": _STR, "seq": _INT, "time": _STR},
}


def _kind_of(parts: list[str]) -> str | None:
    if len(parts) == 3 and parts[2] == "repo.json":
        return "repo"
    if len(parts) == 4 and parts[2] == "bundles":
        return "bundle"
    if len(parts) == 4 and parts[2] == "labels":
        return "label"
    if len(parts) == 5 and parts[2] == "label-history":
        return "label"
    return None


def _check_record(key: str, raw: bytes) -> tuple[str | None, dict[str, object] | None, str | None]:
    """(kind, record, problem) for one metadata record."""
    parts = key.split("/")
    kind = _kind_of(parts)
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return kind, None, f"is not JSON: {err}"
    if not isinstance(record, dict):
        return kind, None, "is not a JSON object"
    if kind is None:
        return None, record, None
    for name, types in _FIELDS[kind].items():
        value = record.get(name)
        if value is None:
            return kind, None, f"lacks the field `{name}`"
        if not isinstance(value, types) or isinstance(value, bool):
            return kind, None, f"has a bad field `{name}`: {value!r} is not a {types[0].__name__}"
    if record["format"] != 1:
        return kind, None, f"has a bad field `format`: {record['format']!r} (this datarun reads 1)"
    if record["repo" if kind != "repo" else "name"] != parts[1]:
        found = record.get("repo", record.get("name"))
        return kind, None, f"has a bad field `repo`: {found!r}, its key says {parts[1]!r}"
    if kind == "bundle":
        if record["id"] != parts[3][:-5] or not is_ksuid(str(record["id"])):
            return kind, None, f"has a bad field `id`: {record['id']!r}, its key says {parts[3][:-5]!r}"
        if not _HEX64.match(str(record["manifest"])):
            return kind, None, f"has a bad field `manifest`: {record['manifest']!r} is not a 64-hex manifest id"
        if int(record["file_count"]) < 0 or int(record["total_size"]) < 0:
            return kind, None, "has a negative `file_count` or `total_size`"
    return kind, record, None


def check_store(
    meta: ObjectStore,
    blobs: ObjectStore,
    *,
    read_data: bool = False,
    sample: float = 1.0,
    repair: bool = False,
    cache_dir: Path | None = None,
    workers: int = 8,
    log: Log = lambda _m: None,
    seed: int | None = None,
) -> CheckReport:
    report = CheckReport()
    add = report.problems.append

    # 1. Records.
    manifests_of: dict[str, list[str]] = {}  # manifest id -> bundle keys that use it
    for info in meta.list(REPOS_PREFIX):
        if not info.key.endswith(".json"):
            continue
        try:
            raw, _ = meta.read(info.key)
        except ObjectNotFound:
            continue
        report.records += 1
        kind, record, problem = _check_record(info.key, raw)
        if problem is not None:
            add(Problem("record", info.key, f"record `{info.key}` {problem}"))
        elif kind == "bundle" and record is not None:
            manifests_of.setdefault(str(record["manifest"]), []).append(info.key)

    # 2. Manifests: each one reads, and its refs are what they say.
    uses: dict[str, dict[int, ChunkRef]] = {}  # pack -> offset -> ref, over every live manifest
    users: dict[str, str] = {}  # pack -> one bundle key that uses it, for messages
    for manifest_id, bundles in sorted(manifests_of.items()):
        report.manifests += 1
        key = manifest_key(manifest_id)
        try:
            for entry in read_manifest_records(meta, manifest_id):
                for ref_raw in entry.get("c", ()):
                    ref = ChunkRef.from_json(ref_raw)
                    uses.setdefault(ref.pack, {})[ref.offset] = ref
                    users.setdefault(ref.pack, f"{bundles[0]} (file `{entry['p']}`)")
        except ObjectNotFound:
            add(Problem("manifest", key, f"manifest `{key}` of {bundles[0]} is missing"))
        except IntegrityError as err:
            add(Problem("manifest", key, f"manifest `{key}` of {bundles[0]}: {err}"))

    # 3. Packs and segments.
    packs = {object_name(i.key): i.size for i in blobs.list(PACK_PREFIX)}
    segment_names = [object_name(i.key) for i in blobs.list(INDEX_PREFIX)]
    report.packs = len(packs)
    indexed: dict[str, dict[int, ChunkRef]] = {}
    broken_segments: set[str] = set()

    def load(name: str) -> tuple[str, list[ChunkRef] | None, str | None]:
        try:
            data, _ = blobs.read(INDEX_PREFIX + name)
            return name, decode_segment(name, data), None
        except ObjectNotFound:
            return name, None, None
        except IntegrityError as bad:
            return name, None, str(bad)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, refs, bad in pool.map(load, segment_names):
            report.segments += 1
            key = INDEX_PREFIX + name
            if bad is not None:
                broken_segments.add(name)
                add(Problem("index", key, f"{bad} (`{key}`)"))
                continue
            if refs is None:
                continue
            indexed[name] = {r.offset: r for r in refs}
            if name not in packs:
                if name not in users:
                    continue  # a segment whose pack a sweep took before the writer put the segment: gc's garbage
                add(
                    Problem(
                        "pack",
                        pack_key(name),
                        f"pack `{pack_key(name)}` is missing; its index segment `{key}` "
                        f"lists {len(refs)} chunks" + (f", used by {users[name]}" if name in users else ""),
                    )
                )
                continue
            end = max((r.offset + r.stored_size for r in refs), default=0)
            if end > packs[name]:
                add(
                    Problem(
                        "index",
                        key,
                        f"index segment `{key}` points past the end of pack `{pack_key(name)}` "
                        f"({end} > {packs[name]} bytes)",
                    )
                )

    for pack, offsets in sorted(uses.items()):
        if pack not in packs:
            if pack not in indexed:  # otherwise reported above
                add(Problem("pack", pack_key(pack), f"pack `{pack_key(pack)}` is missing, used by {users[pack]}"))
            continue
        seg = indexed.get(pack)
        if seg is None:
            if pack not in broken_segments:
                add(
                    Problem(
                        "index",
                        INDEX_PREFIX + pack,
                        f"index segment `{INDEX_PREFIX}{pack}` is missing for pack "
                        f"`{pack_key(pack)}`, used by {users[pack]}",
                    )
                )
            continue
        for off, ref in offsets.items():
            if seg.get(off) != ref:
                add(
                    Problem(
                        "index",
                        INDEX_PREFIX + pack,
                        f"chunk {ref.digest.hex()[:16]} at offset {off} of pack "
                        f"`{pack_key(pack)}` is not in its index segment "
                        f"(used by {users[pack]})",
                    )
                )
                break

    # 4. Data.
    if read_data:
        chosen = sorted(p for p in uses if p in packs)
        if sample < 1.0:
            rng = random.Random(seed)  # noqa: S311 - a sample of packs, not a secret
            chosen = [p for p in chosen if rng.random() < sample]

        def read_pack(pack: str) -> tuple[int, int, list[Problem]]:
            found: list[Problem] = []
            n = size = 0
            for off in sorted(uses[pack]):
                ref = uses[pack][off]
                try:
                    decode_chunk(ref, blobs.get_range(pack_key(pack), ref.offset, ref.stored_size))
                except (IntegrityError, DatarunError) as err:
                    found.append(
                        Problem(
                            "data",
                            pack_key(pack),
                            f"pack `{pack_key(pack)}`: {err} at offset {off} (used by {users[pack]})",
                        )
                    )
                    break
                n += 1
                size += ref.stored_size
            return n, size, found

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for n, size, found in pool.map(read_pack, chosen):
                report.chunks_read += n
                report.bytes_read += size
                report.problems.extend(found)

    if repair:
        _repair(blobs, packs, uses, indexed, report, cache_dir, log)
    return report


def _repair(
    blobs: ObjectStore,
    packs: dict[str, int],
    uses: dict[str, dict[int, ChunkRef]],
    indexed: dict[str, dict[int, ChunkRef]],
    report: CheckReport,
    cache_dir: Path | None,
    log: Log,
) -> None:
    for pack, offsets in sorted(uses.items()):
        if pack not in packs or pack in indexed:
            continue
        refs = [offsets[o] for o in sorted(offsets)]
        # Only a table that covers the pack end to end and hashes to its id is its table.
        contiguous = all(a.offset + a.stored_size == b.offset for a, b in itertools.pairwise(refs))
        chunks = [PendingChunk(r.digest, r.offset, r.stored_size, r.size, r.compressed) for r in refs]
        if (
            not refs
            or refs[0].offset != 0
            or not contiguous
            or refs[-1].offset + refs[-1].stored_size != packs[pack]
            or pack_id_of(chunks) != pack
        ):
            log(f"cannot rebuild `{INDEX_PREFIX}{pack}`: the live manifests do not name every frame of the pack")
            continue
        blobs.put(INDEX_PREFIX + pack, encode_segment(pack, chunks))
        report.repaired.append(INDEX_PREFIX + pack)
    if cache_dir is not None and (cache_dir / "index").is_dir():
        shutil.rmtree(cache_dir / "index", ignore_errors=True)
        report.repaired.append(str(cache_dir / "index"))
