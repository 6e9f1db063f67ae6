"""The lineage feed: which nodes of a store are invalid, polled with a watermark.

Every finished DataRun's ``lineage`` timer asks here; the store is polled at most once per
``interval`` per store URL (two list requests while nothing was invalidated), and a run whose
last seen watermark equals the current one does no more work. Everything goes through datarun's
public packages (``datarun.repo``, ``datarun.catalog``, ``datarun.lineage``); the index is the
local SQLite one under the client's cache folder, so a restarted operator rebuilds it from the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from datarun.catalog import open_index
from datarun.lineage import Graph
from datarun.repo import connect


@dataclass(frozen=True, slots=True)
class Seen:
    watermark: str
    when: float


class LineageFeed:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()  # one sync of the (SQLite) index at a time
        self._seen: dict[str, Seen] = {}

    def watermark(self, store_url: str, *, fresh: bool = False) -> str:
        """The store's newest invalidation event id ("" if none), re-polled if older than the interval."""
        with self._lock:
            seen = self._seen.get(store_url)
            if seen is not None and not fresh and time.monotonic() - seen.when < self.interval:
                return seen.watermark
            client = connect(store_url)
            try:
                with open_index(None, client.cache_dir) as index:
                    graph = Graph(index)
                    if fresh:
                        mark = graph.refresh(client.meta)  # pin time: the whole graph, never stale
                    else:
                        # A tick: the events only (two list requests); the graph is synced again only
                        # when the watermark moved, or on the first tick after a start.
                        graph.sync(client.meta, invalidations_only=True)
                        mark = graph.watermark()
                        if mark and (seen is None or seen.watermark != mark):
                            graph.sync(client.meta)
            finally:
                client.close()
            self._seen[store_url] = Seen(mark, time.monotonic())
            return mark

    def reasons(self, store_url: str, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Active invalidations reaching each key, as of the last poll."""
        if not keys or not self.watermark(store_url):
            return {}
        with self._lock:
            client = connect(store_url)
            try:
                with open_index(None, client.cache_dir) as index:
                    return Graph(index).invalid_reasons(list(keys))
            finally:
                client.close()
