"""Lineage: the provenance graph of bundles, runs and external records, and invalidation over it.

    from datarun.catalog import open_index
    from datarun.lineage import Graph, bundle_node
    with open_index(None, client.cache_dir) as index:
        graph = Graph(index)          # its tables live in the run index's database
        graph.sync(client.meta)       # bundle provenance, run documents, records, invalidations
        walk = graph.walk(bundle_node("models", bundle_id), "ancestors", depth=50, kinds=("bundle",))

The store holds the truth (FORMAT.md, "Lineage"); the tables are a cache that rebuilds from it.
"""

from __future__ import annotations

from datarun.lineage.check import invalidation_check
from datarun.lineage.graph import Graph
from datarun.lineage.layout import NodeId, bundle_node, parse_node_key, parse_parent
from datarun.lineage.rows import Edge, LineageSync, Node, Walk
from datarun.lineage.writes import Cascade, add_record, invalidate, revalidate

__all__ = [
    "Cascade",
    "Edge",
    "Graph",
    "LineageSync",
    "Node",
    "NodeId",
    "Walk",
    "add_record",
    "bundle_node",
    "invalidate",
    "invalidation_check",
    "parse_node_key",
    "parse_parent",
    "revalidate",
]
