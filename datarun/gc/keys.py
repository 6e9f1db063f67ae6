"""Every key the garbage-collection protocol writes, in one place (FORMAT.md, "Garbage collection").

All of them live in the metadata store, next to the records whose reachability they describe.
"""

from __future__ import annotations

GC_PREFIX = "gc/"
LOCK_KEY = "gc/lock.json"
MARKS_PREFIX = "gc/marks/"
PLANS_PREFIX = "gc/plans/"
COMMITS_PREFIX = "gc/commits/"
MANIFESTS_PREFIX = "manifests/"
PACKS_PREFIX = "packs/"
INDEX_PREFIX = "index/"
REPOS_PREFIX = "repos/"
RUNS_PREFIX = "runs/"


def mark_key(mark_id: str) -> str:
    return f"{MARKS_PREFIX}{mark_id}.json"


def plan_key(plan_id: str) -> str:
    return f"{PLANS_PREFIX}{plan_id}.json"


def commit_key(bundle_id: str) -> str:
    return f"{COMMITS_PREFIX}{bundle_id}.json"


def tombstone_key(repo: str, bundle_id: str) -> str:
    return f"repos/{repo}/tombstones/{bundle_id}.json"


def repo_tombstone_key(repo: str) -> str:
    return f"tombstones/repos/{repo}.json"


def archived_history_prefix(repo: str, label: str, stamp: str) -> str:
    return f"repos/{repo}/label-history-removed/{label}/{stamp}/"


def object_name(key: str) -> str:
    """The id at the end of a content-addressed key (``packs/ab/<id>`` -> ``<id>``)."""
    return key.rsplit("/", 1)[-1]
