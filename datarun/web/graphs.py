"""The run index and lineage graph behind the runs and lineage pages, synced on each request.

The index is the CLI's (a SQLite file in the client's cache folder), so `datarun web` and
`datarun run query` share one copy. A sync that finds nothing new is a few listings, so every page
shows the store as it is now, with no background thread to keep alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from datarun.catalog import Index, open_index
from datarun.lineage import Graph
from datarun.repo import Client


@contextmanager
def synced(client: Client, *, whole_graph: bool = True) -> Iterator[tuple[Index, Graph]]:
    """The index synced with the run change feed, and the graph with the store's lineage;
    ``whole_graph=False`` syncs only invalidations (enough to say what is invalid)."""
    with open_index(None, client.cache_dir) as index:
        applied = index.sync(client.meta).applied
        graph = Graph(index)
        seen = graph.sync(client.meta, invalidations_only=not whole_graph)
        graph.flag_runs(full=applied > 0 or seen.fetched > 0)
        yield index, graph


def invalid_reasons(client: Client, node_key: str) -> tuple[str, ...]:
    """Why the node (``bundle/<repo>/<id>``, ``run/<id>``) is invalid; empty if it is not."""
    with synced(client, whole_graph=False) as (_, graph):
        return graph.invalid_reasons([node_key]).get(node_key, ())
