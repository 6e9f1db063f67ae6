"""Every store key datarun reads or writes, built in one place (FORMAT.md §1.3, "Key layout").

The table in FORMAT.md and ``KINDS`` below describe the same layout; a unit test holds them
together. Names and ids are validated by their callers (``model``, ``ids``) before they reach
here, so these functions only assemble strings: they never touch a store.

``KINDS`` is the one list of every kind of key with the prefix it lives under, so that tools
which walk a whole store (garbage collection, audits) need not know how keys are spelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STORE_MARKER = "datarun-store.json"
REPOS_PREFIX = "repos/"
MANIFEST_PREFIX = "manifests/"
PACK_PREFIX = "packs/"
INDEX_PREFIX = "index/"
RUN_RECORDS_PREFIX = "runs/records/"
RUN_CHANGES_PREFIX = "runs/changes/"
RUN_SNAPSHOTS_PREFIX = "runs/snapshots/"
CACHE_PREFIX = "cache/"
LINEAGE_RECORDS_PREFIX = "lineage/records/"  # external records (FORMAT.md §14)
LINEAGE_EVENTS_PREFIX = "lineage/events/"  # invalidations and revalidations, append-only
LINEAGE_MARKS_PREFIX = "lineage/marks/"  # <event-id>/<seq>.json: nodes an invalidation reached
LINEAGE_DONE_PREFIX = "lineage/done/"  # <event-id>.json: that cascade wrote every mark
LINEAGE_ACTIONS_PREFIX = "lineage/actions/"  # invalidation actions
LINEAGE_EXECUTIONS_PREFIX = "lineage/executions/"  # <event-id>/<action-id>.json: one run of an action
LINEAGE_RERUNS_PREFIX = "lineage/reruns/"  # <run-id>/<event-id>.<action-id>.json: the operator's rerun outcome
RUNS_PREFIX = "runs/"
# Garbage collection (FORMAT.md, "Garbage collection"): all in the metadata store, next to the
# records whose reachability they describe.
GC_PREFIX = "gc/"
GC_LOCK_KEY = "gc/lock.json"
GC_GENERATION_KEY = "gc/generation.json"
GC_MARKS_PREFIX = "gc/marks/"
GC_PLANS_PREFIX = "gc/plans/"
GC_COMMITS_PREFIX = "gc/commits/"
TOMBSTONES_PREFIX = "tombstones/"  # of renamed and deleted repos: outside repos/, which lose theirs


# -- metadata store ----------------------------------------------------------------------


def repo_prefix(repo: str) -> str:
    """Every record of one repo: what a repo delete or rename walks."""
    return f"{REPOS_PREFIX}{repo}/"


def repo_key(repo: str) -> str:
    return f"{repo_prefix(repo)}repo.json"


def bundles_prefix(repo: str) -> str:
    return f"{REPOS_PREFIX}{repo}/bundles/"


def bundle_key(repo: str, bundle_id: str) -> str:
    return f"{bundles_prefix(repo)}{bundle_id}.json"


def labels_prefix(repo: str) -> str:
    return f"{REPOS_PREFIX}{repo}/labels/"


def label_key(repo: str, label: str) -> str:
    return f"{labels_prefix(repo)}{label}.json"


def history_prefix(repo: str, label: str) -> str:
    return f"{REPOS_PREFIX}{repo}/label-history/{label}/"


def history_key(repo: str, label: str, seq: int) -> str:
    # Zero-padded so that the byte order of keys (the order listings return) is the order of moves.
    return f"{history_prefix(repo, label)}{seq:012d}.json"


def manifest_key(manifest_id: str) -> str:
    return f"{MANIFEST_PREFIX}{manifest_id[:2]}/{manifest_id}"


def tombstone_key(repo: str, bundle_id: str) -> str:
    return f"{REPOS_PREFIX}{repo}/tombstones/{bundle_id}.json"


def repo_tombstone_key(repo: str) -> str:
    return f"{TOMBSTONES_PREFIX}repos/{repo}.json"


def archived_history_prefix(repo: str, label: str, stamp: str) -> str:
    return f"{REPOS_PREFIX}{repo}/label-history-removed/{label}/{stamp}/"


def gc_mark_key(mark_id: str) -> str:
    return f"{GC_MARKS_PREFIX}{mark_id}.json"


def gc_plan_key(plan_id: str) -> str:
    return f"{GC_PLANS_PREFIX}{plan_id}.json"


def gc_commit_key(bundle_id: str) -> str:
    return f"{GC_COMMITS_PREFIX}{bundle_id}.json"


def object_name(key: str) -> str:
    """The id at the end of a content-addressed key (``packs/ab/<id>`` -> ``<id>``)."""
    return key.rsplit("/", 1)[-1]


# -- blob store --------------------------------------------------------------------------


def pack_key(pack_id: str) -> str:
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def segment_key(pack_id: str) -> str:
    return f"{INDEX_PREFIX}{pack_id}"


def segment_name(key: str) -> str:
    """The pack id a segment key is named after (the inverse of ``segment_key``)."""
    if not key.startswith(INDEX_PREFIX):
        raise ValueError(f"`{key}` is not an index segment key")
    return key[len(INDEX_PREFIX) :]


def run_record_prefix(run_id: str) -> str:
    return f"{RUN_RECORDS_PREFIX}{run_id}/"


def run_record_key(run_id: str, version: int) -> str:
    return f"{RUN_RECORDS_PREFIX}{run_id}/{version:06d}.json"


def run_change_key(change_id: str) -> str:
    return f"{RUN_CHANGES_PREFIX}{change_id}.json"


def cache_task_prefix(task: str) -> str:
    """Every cache entry of one task (same declared outputs): where `explain-cache` looks for the
    nearest earlier run."""
    return f"{CACHE_PREFIX}{task}/"


def cache_key_prefix(task: str, key: str) -> str:
    """The entries of one cache key: a lookup is one listing of this prefix."""
    return f"{cache_task_prefix(task)}{key}/"


def cache_entry_key(task: str, key: str, run_id: str) -> str:
    return f"{cache_key_prefix(task, key)}{run_id}.json"


# -- the list of kinds -------------------------------------------------------------------

Role = Literal["meta", "blob"]
Writing = Literal["create-only", "cas", "content", "overwrite"]  # overwrite: a plain `put` of a newer copy


@dataclass(frozen=True)
class KeyKind:
    """One kind of key: where it lives, how it is written, and its pattern as FORMAT.md spells it."""

    name: str
    store: Role
    prefix: str  # every key of this kind starts with it; listing it finds them all
    pattern: str  # FORMAT.md's spelling, with <placeholders>
    writing: Writing


KINDS: tuple[KeyKind, ...] = (
    KeyKind("store-marker", "meta", STORE_MARKER, STORE_MARKER, "create-only"),
    KeyKind("repo", "meta", REPOS_PREFIX, repo_key("<repo>"), "create-only"),
    KeyKind("bundle", "meta", REPOS_PREFIX, bundle_key("<repo>", "<bundle-id>"), "create-only"),
    KeyKind("label", "meta", REPOS_PREFIX, label_key("<repo>", "<label>"), "cas"),
    KeyKind("label-history", "meta", REPOS_PREFIX, f"{history_prefix('<repo>', '<label>')}<seq>.json", "create-only"),
    KeyKind("manifest", "meta", MANIFEST_PREFIX, f"{MANIFEST_PREFIX}<id[0:2]>/<id>", "content"),
    KeyKind("pack", "blob", PACK_PREFIX, f"{PACK_PREFIX}<id[0:2]>/<id>", "content"),
    KeyKind("index-segment", "blob", INDEX_PREFIX, segment_key("<pack-id>"), "content"),
    KeyKind("run-version", "meta", RUN_RECORDS_PREFIX, f"{run_record_prefix('<run-id>')}<version>.json", "create-only"),
    KeyKind("run-change", "meta", RUN_CHANGES_PREFIX, f"{RUN_CHANGES_PREFIX}<change-id>.json", "create-only"),
    KeyKind(
        "run-snapshot", "meta", RUN_SNAPSHOTS_PREFIX, f"{RUN_SNAPSHOTS_PREFIX}<watermark>.jsonl.zst", "create-only"
    ),
    KeyKind(
        "lineage-record", "meta", LINEAGE_RECORDS_PREFIX, f"{LINEAGE_RECORDS_PREFIX}<record-id>.json", "create-only"
    ),
    KeyKind("lineage-event", "meta", LINEAGE_EVENTS_PREFIX, f"{LINEAGE_EVENTS_PREFIX}<event-id>.json", "create-only"),
    KeyKind(
        "lineage-mark", "meta", LINEAGE_MARKS_PREFIX, f"{LINEAGE_MARKS_PREFIX}<event-id>/<seq>.json", "create-only"
    ),
    KeyKind("lineage-done", "meta", LINEAGE_DONE_PREFIX, f"{LINEAGE_DONE_PREFIX}<event-id>.json", "create-only"),
    KeyKind(
        "lineage-action", "meta", LINEAGE_ACTIONS_PREFIX, f"{LINEAGE_ACTIONS_PREFIX}<action-id>.json", "create-only"
    ),
    KeyKind(
        "lineage-execution",
        "meta",
        LINEAGE_EXECUTIONS_PREFIX,
        f"{LINEAGE_EXECUTIONS_PREFIX}<event-id>/<action-id>.json",
        "create-only",
    ),
    KeyKind(
        "lineage-rerun",
        "meta",
        LINEAGE_RERUNS_PREFIX,
        f"{LINEAGE_RERUNS_PREFIX}<run-id>/<event-id>.<action-id>.json",
        "create-only",
    ),
    KeyKind("cache-entry", "meta", CACHE_PREFIX, cache_entry_key("<task>", "<key>", "<run-id>"), "create-only"),
    KeyKind("gc-lock", "meta", GC_LOCK_KEY, GC_LOCK_KEY, "create-only"),
    KeyKind("gc-generation", "meta", GC_GENERATION_KEY, GC_GENERATION_KEY, "cas"),
    KeyKind("gc-mark", "meta", GC_MARKS_PREFIX, gc_mark_key("<mark-id>"), "create-only"),
    KeyKind("gc-plan", "meta", GC_PLANS_PREFIX, gc_plan_key("<plan-id>"), "create-only"),
    KeyKind("gc-commit", "meta", GC_COMMITS_PREFIX, gc_commit_key("<bundle-id>"), "create-only"),
    KeyKind("bundle-tombstone", "meta", REPOS_PREFIX, tombstone_key("<repo>", "<bundle-id>"), "create-only"),
    KeyKind(
        "removed-label-history",
        "meta",
        REPOS_PREFIX,
        f"{archived_history_prefix('<repo>', '<label>', '<stamp>')}<seq>.json",
        "overwrite",
    ),
    KeyKind("repo-tombstone", "meta", TOMBSTONES_PREFIX, repo_tombstone_key("<repo>"), "overwrite"),
)


def kind_of(key: str) -> KeyKind | None:
    """The kind of ``key``, or None for a key datarun never writes (GC must leave those alone)."""
    parts = key.split("/")
    by_name = {kind.name: kind for kind in KINDS}
    if key == STORE_MARKER:
        return by_name["store-marker"]
    head = parts[0] + "/"
    if head == REPOS_PREFIX:
        if len(parts) == 3 and parts[2] == "repo.json":
            return by_name["repo"]
        if len(parts) == 4 and parts[2] in ("bundles", "labels") and parts[3].endswith(".json"):
            return by_name["bundle" if parts[2] == "bundles" else "label"]
        if len(parts) == 5 and parts[2] == "label-history" and parts[4].endswith(".json"):
            return by_name["label-history"]
        if len(parts) == 4 and parts[2] == "tombstones" and parts[3].endswith(".json"):
            return by_name["bundle-tombstone"]
        if len(parts) == 6 and parts[2] == "label-history-removed" and all(parts) and parts[5].endswith(".json"):
            return by_name["removed-label-history"]
        return None
    if head in (MANIFEST_PREFIX, PACK_PREFIX) and len(parts) == 3 and parts[2][:2] == parts[1] != "":
        return by_name["manifest" if head == MANIFEST_PREFIX else "pack"]
    if head == INDEX_PREFIX and len(parts) == 2 and parts[1]:
        return by_name["index-segment"]
    if key.startswith(RUN_RECORDS_PREFIX) and len(parts) == 4 and parts[2] and parts[3].endswith(".json"):
        return by_name["run-version"]
    if key.startswith(RUN_CHANGES_PREFIX) and len(parts) == 3 and parts[2].endswith(".json"):
        return by_name["run-change"]
    if key.startswith(RUN_SNAPSHOTS_PREFIX) and len(parts) == 3 and parts[2].endswith(".jsonl.zst"):
        return by_name["run-snapshot"]
    if parts[0] == "lineage" and len(parts) >= 3 and parts[-1].endswith(".json") and all(parts):
        flat = {
            "records": "lineage-record",
            "events": "lineage-event",
            "done": "lineage-done",
            "actions": "lineage-action",
        }
        nested = {"marks": "lineage-mark", "executions": "lineage-execution", "reruns": "lineage-rerun"}
        if len(parts) == 3 and parts[1] in flat:
            return by_name[flat[parts[1]]]
        if len(parts) == 4 and parts[1] in nested:
            return by_name[nested[parts[1]]]
        return None
    if head == GC_PREFIX:
        if key in (GC_LOCK_KEY, GC_GENERATION_KEY):
            return by_name["gc-lock" if key == GC_LOCK_KEY else "gc-generation"]
        nested = {"marks": "gc-mark", "plans": "gc-plan", "commits": "gc-commit"}
        if len(parts) == 3 and parts[1] in nested and parts[2].endswith(".json") and parts[2] != ".json":
            return by_name[nested[parts[1]]]
        return None
    if head == TOMBSTONES_PREFIX and len(parts) == 3 and parts[1] == "repos" and parts[2].endswith(".json"):
        return by_name["repo-tombstone"]
    if head == CACHE_PREFIX and len(parts) == 4 and parts[1] and parts[2] and parts[3].endswith(".json"):
        return by_name["cache-entry"]
    return None
