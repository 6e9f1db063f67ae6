"""Lineage's answer to the run cache: which of these nodes did an invalidation reach?

The run cache (``datarun.cache``) sits below lineage in the layers, so it takes this check as a
callable (``RunCache.checking``) instead of importing the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datarun.cache import InvalidReasons
from datarun.catalog import open_index
from datarun.lineage.graph import Graph
from datarun.store.base import ObjectStore


def invalidation_check(meta: ObjectStore, cache_dir: Path, index_url: str | None = None) -> InvalidReasons:
    """A check that syncs the invalidations once (two list requests, plus one per unfinished
    cascade) on its first call, then answers from the local index."""
    synced = False

    def reasons(keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
        nonlocal synced
        with open_index(index_url, cache_dir) as index:
            graph = Graph(index)
            if not synced:
                graph.sync(meta, invalidations_only=True)
                synced = True
            found: dict[str, tuple[str, ...]] = graph.invalid_reasons(list(keys))
            return found

    return reasons
