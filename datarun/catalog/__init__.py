"""The run catalog: an index of the store's run records and the query language over them.

    from datarun.catalog import open_index
    with open_index(None, cache_dir) as index:   # SQLite in the cache unless --index/DATARUN_INDEX/config
        index.sync(meta_store)                    # one list request when nothing is new
        runs = index.query("run.params.lr > 0.01", order_by="run.start", top=10)

The index is a cache (rebuilt from ``runs/changes/`` whenever it is lost); the store is the truth.
"""

from __future__ import annotations

from datarun.catalog.backends import ENV_INDEX, choose_index_url, open_index
from datarun.catalog.index import Index, SyncStats
from datarun.catalog.language import QuerySyntaxError, parse, parse_value

__all__ = [
    "ENV_INDEX",
    "Index",
    "QuerySyntaxError",
    "SyncStats",
    "choose_index_url",
    "open_index",
    "parse",
    "parse_value",
]
