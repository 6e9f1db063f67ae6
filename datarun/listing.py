"""The bundle listing index: a repo's bundles from one GET and one LIST, not one GET per bundle.

Keys (FORMAT.md §17), all under ``listings/<repo>/``, outside ``repos/`` so that the record tools
(check, rename, delete) never mistake them for records:

- ``base.json``: the compacted listing, a row (id, time, message) per bundle folded so far, replaced only by
  compare-and-swap, and bound to the repo record's ``created`` so a repo deleted and created again
  never inherits the old one's listing;
- ``tail/<bundle-id>.json``: written by each commit *before* its bundle record, so every visible
  bundle is in the base or has a tail entry, whatever crashes or races;
- ``gone/<bundle-id>.json``: written by a delete *before* the bundle record goes.

A reader GETs the base and LISTs the folder once (tail and gone together), then reads the few
bundle records of the tail that the base does not hold yet. A commit folds the tail into the
base once it reaches ``COMPACT_AT`` entries; a compaction that loses the race leaves the tail in
place for the next one, so nothing is lost. Without a base (a store written before the index, or
one whose base was refused) readers fall back to reading every record.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from datarun.errors import DatarunError, IntegrityError, ObjectNotFound, PreconditionFailed
from datarun.ids import is_ksuid, ksuid_time
from datarun.layout import bundle_key, bundles_prefix
from datarun.records import decode, dumps
from datarun.store import ObjectStore

log = logging.getLogger("datarun.listing")

LISTINGS_PREFIX = "listings/"
COMPACT_AT = 64
STALE_AFTER = 3600.0
"""A tail entry with no bundle record after this many seconds is a commit that died before its
record: compaction drops it. A live commit writes its record seconds after its tail entry."""
_FORMAT = 1
_ROW = ("id", "created", "message")
"""What the base keeps of each record for `bundle list`. Whole records (provenance and all) made
a base of ~770 bytes per bundle, and decoding it the larger part of a listing."""


LINKS = "links"
"""The row's lineage edges: ``{"run": id, "inputs": [[repo, bundle], ...]}``, each part only when
not empty. With them the lineage graph follows a repo's bundles from the listing alone, with no
GET per bundle (FORMAT.md §17). A row without the key was written before it existed: its record is read."""


def links_of(record: dict[str, Any]) -> dict[str, Any]:
    prov = record.get("provenance") or {}
    links: dict[str, Any] = {}
    run = (prov.get("run") or {}).get("run_id") or ""
    if run:
        links["run"] = str(run)
    inputs = [[str(p["repo"]), str(p["bundle"])] for p in prov.get("inputs") or []]
    if inputs:
        links["inputs"] = inputs
    return links


def row_of(record: dict[str, Any]) -> dict[str, Any]:
    """The base's row for a bundle record."""
    row = {k: record[k] for k in _ROW if k in record}
    row[LINKS] = links_of(record)
    return row


def _folder(repo: str) -> str:
    return f"{LISTINGS_PREFIX}{repo}/"


@dataclass(frozen=True, slots=True)
class _Seen:
    base: dict[str, dict[str, Any]] | None  # id -> record; None: no usable base
    etag: str  # of the base, "" if absent
    tail: tuple[str, ...]
    gone: frozenset[str]


@dataclass(frozen=True, slots=True)
class Followed:
    """What ``BundleListing.follow`` saw."""

    base: dict[str, dict[str, Any]] | None  # id -> row; None: unchanged, or no usable base
    etag: str  # of the base
    unchanged: bool  # the base still had the etag the follower knew: its rows were not read
    tail: tuple[str, ...]


class BundleListing:
    def __init__(self, meta: ObjectStore, repo: str, repo_created: str, workers: int = 16) -> None:
        self.meta = meta
        self.repo = repo
        self.repo_created = repo_created
        self.workers = workers
        self._base_key = f"{_folder(repo)}base.json"

    # -- writers ---------------------------------------------------------------------------

    def will_commit(self, record: dict[str, Any]) -> None:
        """Before the bundle record is created: its tail entry (harmless if the commit fails)."""
        self.meta.put(f"{_folder(self.repo)}tail/{record['id']}.json", dumps(record))

    def will_delete(self, bundle_id: str) -> None:
        """Before the bundle record is deleted. A crash in between hides a bundle that still
        exists from `bundle list` (never the other way round); running the delete again finishes it."""
        self.meta.put(f"{_folder(self.repo)}gone/{bundle_id}.json", dumps({"format": _FORMAT, "id": bundle_id}))

    def after_commit(self) -> None:
        """Fold the tail into the base when it is long (or there is no base yet); never fails the commit."""
        try:
            seen = self._look()
            if seen.base is None or len(seen.tail) >= COMPACT_AT:
                self.compact(seen)
        except DatarunError as err:
            log.warning("could not compact the bundle listing of repo `%s`: %s", self.repo, err)

    def compact(self, seen: _Seen | None = None) -> bool:
        """Write a new base holding the tail; False when another writer replaced the base first."""
        seen = seen or self._look()
        base = seen.base if seen.base is not None else self._scan()
        fresh = [i for i in seen.tail if i not in base]
        found = self._records(fresh)
        records = {i: r for i, r in base.items() if i not in seen.gone}
        records.update((i, row_of(r)) for i, r in found.items() if i not in seen.gone)
        body = dumps(
            {
                "format": _FORMAT,
                "repo": self.repo,
                "repo_created": self.repo_created,
                "bundles": [records[i] for i in sorted(records)],
            }
        )
        try:
            if seen.etag:
                self.meta.put_if_match(self._base_key, body, seen.etag)
            else:
                self.meta.put_if_absent(self._base_key, body)
        except (PreconditionFailed, ObjectNotFound):
            return False  # another compaction won; the tail stays for the next one
        # Only entries the base just written holds (or that died uncommitted) are removed.
        now = time.time()
        for i in seen.tail:
            if i in records or (i not in found and i not in base and now - _age_from(i) > STALE_AFTER):
                self.meta.delete(f"{_folder(self.repo)}tail/{i}.json")
        return True

    # -- readers ---------------------------------------------------------------------------

    def read(self) -> list[dict[str, Any]] | None:
        """A row (id, created, message) per bundle of the repo in id order, or None when there is no usable base."""
        seen = self._look()
        if seen.base is None:
            return None
        records = {i: r for i, r in seen.base.items() if i not in seen.gone}
        missing = [i for i in seen.tail if i not in records and i not in seen.gone]
        records.update((i, row_of(r)) for i, r in self._records(missing).items())
        return [records[i] for i in sorted(records)]

    def follow(self, known_etag: str = "") -> Followed:
        """For a follower that keeps its own copy (the lineage graph): the base's rows, unless
        the base still has ``known_etag`` (then one HEAD instead of a GET of the whole base), and
        the ids of the tail entries, whose records it reads itself, and only those it has not
        seen. Deletes are not reported."""
        if known_etag:
            try:
                etag = self.meta.head(self._base_key).etag
            except ObjectNotFound:
                etag = ""
            if etag == known_etag:
                tail, _ = self._folder_entries()
                return Followed(None, etag, True, tail)
        seen = self._look()
        return Followed(seen.base, seen.etag, False, seen.tail)

    # -- plumbing --------------------------------------------------------------------------

    def _look(self) -> _Seen:
        base: dict[str, dict[str, Any]] | None = None
        etag = ""
        try:
            raw, info = self.meta.read(self._base_key)
            etag = info.etag
            doc = decode(self._base_key, raw)
            if doc.get("repo_created") == self.repo_created and doc.get("repo") == self.repo:
                base = {r["id"]: r for r in doc["bundles"]}
        except ObjectNotFound:
            pass
        except (IntegrityError, KeyError, TypeError, AttributeError) as err:
            # A damaged base is only an index: read the records instead, and let compaction replace it.
            log.warning("ignoring the bundle listing of repo `%s`: %s", self.repo, err)
            base = None
        tail, gone = self._folder_entries()
        return _Seen(base, etag, tail, gone)

    def _folder_entries(self) -> tuple[tuple[str, ...], frozenset[str]]:
        """The ids of the tail and of the gone entries: one LIST."""
        tail: list[str] = []
        gone: set[str] = set()
        folder = _folder(self.repo)
        for info in self.meta.list(folder):
            part, _, name = info.key[len(folder) :].partition("/")
            bundle_id = name.removesuffix(".json")
            if not is_ksuid(bundle_id):
                continue
            if part == "tail":
                tail.append(bundle_id)
            elif part == "gone":
                gone.add(bundle_id)
        return tuple(tail), frozenset(gone)

    def _records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The bundle records of ``ids`` that exist (a tail entry's commit may not have landed)."""

        def one(bundle_id: str) -> tuple[str, dict[str, Any] | None]:
            key = bundle_key(self.repo, bundle_id)
            try:
                raw, _ = self.meta.read(key)
            except ObjectNotFound:
                return bundle_id, None
            record: dict[str, Any] = decode(key, raw)
            return bundle_id, record

        if not ids:
            return {}
        with ThreadPoolExecutor(min(self.workers, len(ids))) as pool:
            return {i: r for i, r in pool.map(one, ids) if r is not None}

    def _scan(self) -> dict[str, dict[str, Any]]:
        """Every bundle record, one GET each: only to build a first base."""
        prefix = bundles_prefix(self.repo)
        ids = [i.key[len(prefix) :].removesuffix(".json") for i in self.meta.list(prefix)]
        return {i: row_of(r) for i, r in self._records([i for i in ids if is_ksuid(i)]).items()}


def _age_from(bundle_id: str) -> float:
    return ksuid_time(bundle_id)
