"""What a transfer counted: kept apart from the transfer code, so result types import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UploadStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes_total: int = 0  # plaintext bytes in the bundle
    bytes_read: int = 0  # bytes read from disk (zero for hash-cache hits)
    chunks_new: int = 0
    chunks_deduplicated: int = 0  # chunks the store or this upload already had
    bytes_new: int = 0  # plaintext bytes of chunks the store did not have
    bytes_stored: int = 0  # bytes written to packs (after compression)
    packs: int = 0
    skipped: list[str] = field(default_factory=list)  # sockets, fifos, devices
    stat_only: bool = False  # the folder matched its last upload's stat record; no file was opened


@dataclass
class DownloadStats:
    files: int = 0
    bytes: int = 0
