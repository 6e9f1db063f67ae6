"""What the Client answers with: frozen records of what an operation did.

They carry counts, sizes and paths for the CLI to print and for callers to check, never the
uploader, downloader or mount machinery that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datarun.model import Bundle, Label
from datarun.summary import TransferSummary
from datarun.transfer.stats import UploadStats


@dataclass(frozen=True)
class UploadResult:
    bundle: Bundle
    stats: UploadStats
    label: Label | None = None
    seconds: float = 0.0

    @property
    def summary(self) -> TransferSummary:
        """The transfer summary the bundle's provenance recorded: the run record keeps the same
        numbers, not a second measurement of its own."""
        return TransferSummary.from_json(self.bundle.provenance.transfer)


@dataclass(frozen=True)
class DownloadResult:
    bundle: Bundle
    destination: Path
    files: int  # regular files written (folders and symlinks are not counted)
    bytes: int
    seconds: float = 0.0


@dataclass(frozen=True)
class MountResult:
    bundle: Bundle
    mountpoint: Path
    files: int


@dataclass(frozen=True)
class VerifyReport:
    bundle: Bundle
    files: int
    bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def upload_summary(stats: UploadStats, files: int, seconds: float) -> TransferSummary:
    """What an upload moved, as the bundle's provenance and the JSON log lines report it."""
    return TransferSummary(
        "upload",
        stats.bytes_total,
        stats.bytes_new,
        stats.bytes_stored,
        stats.chunks_new,
        stats.chunks_deduplicated,
        files,
        seconds,
    )
