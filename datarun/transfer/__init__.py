"""Moving folder trees into and out of a store, bounded-parallel and streaming.

``upload`` turns a folder into packs and a manifest; ``download`` brings bundles back (to a
folder, to a consumer, or only through the hash check); ``parallel`` is the bounded thread-pool
shape both use. ``datarun.repo`` is the only caller; everyone else goes through it.
"""

from datarun.transfer.download import Downloader, DownloadStats, stream_entry, verify_entries
from datarun.transfer.parallel import DEFAULT_WORKERS
from datarun.transfer.upload import Uploader, UploadStats

__all__ = [
    "DEFAULT_WORKERS",
    "DownloadStats",
    "Downloader",
    "UploadStats",
    "Uploader",
    "stream_entry",
    "verify_entries",
]
