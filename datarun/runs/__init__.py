"""Run records: the exekias-style, versioned record of one run and its store operations.

Pure model and store calls only (no transfer, no CLI): the facade binds a :class:`RunStore` to
a client's metadata store as ``Client.runs``; the catalog syncs from the change feed it writes.
"""

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
    Run,
    Source,
    iso,
    now_iso,
)
from datarun.runs.runstore import CHANGES, RECORDS, RunStore, change_key, record_key, stable_run_id

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
    "Run",
    "RunStore",
    "Source",
    "change_key",
    "iso",
    "now_iso",
    "record_key",
    "stable_run_id",
]
