"""Run records: the exekias-style, versioned record of one run and its store operations.

Pure model and store calls only (no transfer, no CLI): the facade binds a :class:`RunStore` to
a client's metadata store as ``Client.runs``; the catalog syncs from the change feed it writes.
"""

from datarun.layout import (
    RUN_CHANGES_PREFIX as CHANGES,
    RUN_RECORDS_PREFIX as RECORDS,
    run_change_key as change_key,
    run_record_key as record_key,
)
from datarun.runs.model import (
    CACHED,
    FAILED,
    PHASES,
    RUN_FORMAT,
    RUNNING,
    SOURCE_BUNDLE,
    SOURCE_IMPORT,
    SUCCEEDED,
    BundleLink,
    CacheStamp,
    Run,
    Source,
    iso,
    now_iso,
)
from datarun.runs.runstore import RunStore, stable_run_id

__all__ = [
    "CACHED",
    "CHANGES",
    "FAILED",
    "PHASES",
    "RECORDS",
    "RUNNING",
    "RUN_FORMAT",
    "SOURCE_BUNDLE",
    "SOURCE_IMPORT",
    "SUCCEEDED",
    "BundleLink",
    "CacheStamp",
    "Run",
    "RunStore",
    "Source",
    "change_key",
    "iso",
    "now_iso",
    "record_key",
    "stable_run_id",
]
