"""Transfer summaries: what an upload moved, for people (CLI), machines (JSON log lines) and
lineage (the bundle record's provenance, so a run's cost stays next to its output).

One JSON object per line on stderr, so batch jobs and log shippers (Loki, Cloud Logging) can
parse it without knowing datarun: ``{"time": ..., "level": "info", "event": "transfer", ...}``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson


@dataclass(frozen=True)
class TransferSummary:
    direction: str  # "upload" or "download"
    bytes: int  # plaintext bytes of the bundle
    bytes_new: int  # plaintext bytes the store did not have
    bytes_stored: int  # bytes written to packs, after compression
    chunks_new: int
    chunks_deduplicated: int
    files: int
    seconds: float

    @property
    def throughput(self) -> float:
        """Plaintext bytes per second over the whole transfer."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        # Throughput from the seconds as written, so a summary read back writes the same JSON.
        seconds = out["seconds"] = round(self.seconds, 6)
        out["throughput"] = round(self.bytes / seconds, 1) if seconds > 0 else 0.0
        return out

    @staticmethod
    def from_json(raw: dict[str, Any]) -> TransferSummary:
        return TransferSummary(
            str(raw.get("direction", "upload")),
            int(raw.get("bytes", 0)),
            int(raw.get("bytes_new", 0)),
            int(raw.get("bytes_stored", 0)),
            int(raw.get("chunks_new", 0)),
            int(raw.get("chunks_deduplicated", 0)),
            int(raw.get("files", 0)),
            float(raw.get("seconds", 0.0)),
        )


def json_line(event: str, fields: dict[str, Any], level: str = "info") -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}Z"
    return orjson.dumps({"time": stamp, "level": level, "event": event, **fields}).decode()


def emit(event: str, fields: dict[str, Any], stream: TextIO | None = None) -> None:
    """Write one JSON log line (stderr by default) and flush, so it survives a kill right after."""
    out = stream or sys.stderr
    out.write(json_line(event, fields) + "\n")
    out.flush()


class JsonFormatter(logging.Formatter):
    """``--log-format json``: every log record as one JSON line; ``extra={"fields": {...}}`` is merged."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(str(getattr(record, "event", "log")), fields, record.levelname.lower())
