"""Cache entries in the store, the lookup, and the explanation of a miss (FORMAT.md §15).

An entry is written per cacheable run, create-only, under ``cache/<task>/<key>/<run-id>.json``,
so a lookup is one listing of the key's prefix: it works on any store the moment the entry is
written, with no index to sync. The entry is only a pointer; the run record stays the truth,
and every candidate is checked again at lookup time (the run is Succeeded with exit 0, every
declared output bundle still exists, nothing invalidated it), because outputs can be deleted or
garbage-collected after the entry was written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datarun.cache.key import KEY_SCHEMA, CacheKey, canonical, differences, key_from_parts
from datarun.errors import IntegrityError, NotFoundError, ObjectNotFound, PreconditionFailed, UsageError
from datarun.layout import LINEAGE_EVENTS_PREFIX, bundle_key, cache_entry_key, cache_key_prefix, cache_task_prefix
from datarun.runs import SUCCEEDED, Run, RunStore
from datarun.store.base import ObjectStore

ENTRY_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer of a lookup: the run to reuse (a hit), or None and why each candidate failed."""

    hit: Run | None
    rejected: tuple[tuple[str, str], ...] = ()  # (run id, reason) per candidate that did not qualify
    reason: str = ""  # why no candidate was even looked at (uncacheable key, no entry)


@dataclass(frozen=True, slots=True)
class Explanation:
    run: str
    key: str
    parts: dict[str, Any]
    cached_from: str | None
    nearest: str | None  # the nearest earlier run of the same task with a cache entry
    differs: tuple[str, ...]  # the parts in which it differs from this run's

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "key": self.key,
            "parts": self.parts,
            "cached_from": self.cached_from,
            "nearest": self.nearest,
            "differs": list(self.differs),
        }


InvalidReasons = Callable[[Sequence[str]], dict[str, tuple[str, ...]]]
"""Lineage's answer for node keys (``bundle/<repo>/<id>``, ``run/<id>``): the active
invalidations reaching each. Lineage sits above the cache in the layers (it reads the run
index), so it is handed in by the caller (``datarun.lineage.invalidation_check``)."""


def run_nodes(run: Run) -> list[str]:
    """The lineage nodes whose invalidation makes ``run`` stale: the run itself, the bundles it
    read and the bundles it wrote. The inputs are checked, not only the outputs, because a
    cascade reaches an output only through provenance, and a run whose inputs were retracted
    must not be reused even if its outputs' marks are not written yet."""
    return [
        f"run/{run.id}",
        *(f"bundle/{b.repo}/{b.bundle}" for b in run.inputs),
        *(f"bundle/{b.repo}/{b.bundle}" for b in run.outputs),
    ]


def not_invalidated(run: Run, invalid: InvalidReasons | None) -> str:
    """ "" while nothing says ``run``'s outputs are stale, else the invalidations that say so.

    ``invalid`` None means the caller has no lineage to ask (nothing invalidates then)."""
    if invalid is None:
        return ""
    found = invalid(run_nodes(run))
    reasons = [f"{node}: {'; '.join(why)}" for node, why in sorted(found.items()) if why]
    return " | ".join(reasons)


class RunCache:
    """The run cache of one metadata store, on top of its run records."""

    def __init__(self, meta: ObjectStore, runs: RunStore, invalid: InvalidReasons | None = None) -> None:
        self.meta = meta
        self.runs = runs
        self.invalid = invalid

    def may_be_invalidated(self) -> bool:
        """False when the store holds no invalidation event at all (one list request), so a
        caller can skip loading lineage; any event, even one revalidated since, says True."""
        return any(True for _ in self.meta.list(LINEAGE_EVENTS_PREFIX))

    def checking(self, invalid: InvalidReasons) -> RunCache:
        """This cache, with lookups asking lineage whether a candidate was invalidated."""
        return RunCache(self.meta, self.runs, invalid)

    # -- writing -----------------------------------------------------------------------------

    def qualifies(self, run: Run, key: CacheKey) -> str:
        """ "" if ``run`` may be cached under ``key``, else the reason it may not."""
        if not key.cacheable:
            return key.uncacheable
        if run.phase != SUCCEEDED or run.exit_code != 0:
            return f"the run is {run.phase} with exit code {run.exit_code}; only Succeeded runs with exit 0 are cached"
        missing = sorted(set(key.parts["outputs"]) - {o.name for o in run.outputs})
        if missing:
            return f"declared output(s) {', '.join(missing)} were not written"
        return ""

    def record(self, run: Run, key: CacheKey) -> str:
        """Write ``run``'s entry if it qualifies; return "" or the reason it was not cached."""
        reason = self.qualifies(run, key)
        if reason:
            return reason
        doc = {
            "format": ENTRY_FORMAT,
            "schema": KEY_SCHEMA,
            "key": key.key,
            "task": key.task,
            "run": run.id,
            "outputs": [o.to_json() for o in run.outputs],
        }
        # A retried record of the same run finds its entry there already: that is success.
        with contextlib.suppress(PreconditionFailed):
            self.meta.put_if_absent(cache_entry_key(key.task, key.key, run.id), canonical(doc))
        return ""

    # -- reading -----------------------------------------------------------------------------

    def _why_not(self, run: Run, key: CacheKey) -> str:
        reason = self.qualifies(run, key)
        if reason:
            return reason
        if run.cache is None or run.cache.key != key.key:
            return "its run record does not carry this key"
        for out in run.outputs:
            try:
                self.meta.head(bundle_key(out.repo, out.bundle))
            except ObjectNotFound:
                return f"its output `{out.name}` (bundle {out.bundle} of repo `{out.repo}`) no longer exists"
        stale = not_invalidated(run, self.invalid)
        if stale:
            return f"it was invalidated ({stale})"
        return ""

    def _entry_runs(self, prefix: str) -> list[tuple[str, str]]:
        """(key, run id) of the entries under ``prefix``, newest run first."""
        out = []
        for info in self.meta.list(prefix):
            parts = info.key.split("/")
            if len(parts) == 4 and parts[3].endswith(".json"):
                out.append((parts[2], parts[3][: -len(".json")]))
        return sorted(out, key=lambda kr: kr[1], reverse=True)

    def lookup(self, key: CacheKey) -> Lookup:
        """The newest run of ``key`` that still qualifies, checked against its run record."""
        if not key.cacheable:
            return Lookup(None, reason=key.uncacheable)
        rejected = []
        for _, run_id in self._entry_runs(cache_key_prefix(key.task, key.key)):
            try:
                run = self.runs.get(run_id)
            except NotFoundError:
                rejected.append((run_id, "its run record is gone"))
                continue
            except (IntegrityError, UsageError) as err:
                # One unreadable record must not hide an older good one: keep looking.
                rejected.append((run_id, f"its run record cannot be read: {err}"))
                continue
            reason = self._why_not(run, key)
            if not reason:
                return Lookup(run, tuple(rejected))
            rejected.append((run_id, reason))
        return Lookup(None, tuple(rejected), "" if rejected else "no earlier run has this key")

    def explain(self, run: Run) -> Explanation:
        """The run's key parts; for a miss, the nearest earlier run of the same task and the
        parts that differ. Runs without a cache stamp cannot be explained."""
        stamp = run.cache
        if stamp is None:
            raise UsageError(f"run `{run.id}` has no cache key (it was not run through the run cache)")
        if stamp.cached_from is not None:
            return Explanation(run.id, stamp.key, stamp.parts, stamp.cached_from, stamp.cached_from, ())
        task = _task_from(stamp.parts)
        earlier = [kr for kr in self._entry_runs(cache_task_prefix(task)) if kr[1] < run.id]
        if not earlier:
            return Explanation(run.id, stamp.key, stamp.parts, None, None, ())
        _, nearest_id = earlier[0]
        nearest = self.runs.get(nearest_id)
        old = nearest.cache.parts if nearest.cache is not None else {}
        return Explanation(run.id, stamp.key, stamp.parts, None, nearest_id, tuple(differences(old, stamp.parts)))


def _task_from(parts: dict[str, Any]) -> str:
    return key_from_parts(parts).task
