"""Moving folder trees into and out of a store, bounded-parallel and streaming.

``upload`` turns a folder into packs and a manifest; ``download`` brings bundles back (to a
folder, to a consumer, or only through the hash check); ``parallel`` is the bounded thread-pool
shape both use. ``datarun.repo`` is the only caller; everyone else goes through it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from datarun.transfer.parallel import DEFAULT_WORKERS
from datarun.transfer.stats import DownloadStats, UploadStats

if TYPE_CHECKING:
    from datarun.transfer.download import Downloader, stream_entry, verify_entries
    from datarun.transfer.upload import Uploader

# The movers are imported on first use (PEP 562): the result types need only the stats, and an
# unchanged re-upload never moves a byte, so its CLI start does not pay for either.
_LAZY = {
    "Downloader": "datarun.transfer.download",
    "stream_entry": "datarun.transfer.download",
    "verify_entries": "datarun.transfer.download",
    "Uploader": "datarun.transfer.upload",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_WORKERS",
    "DownloadStats",
    "Downloader",
    "UploadStats",
    "Uploader",
    "stream_entry",
    "verify_entries",
]
