"""The run feed's objects as the index reads them (FORMAT.md, "Runs"): one change per run
version under ``runs/changes/``, and the compacted snapshots under ``runs/snapshots/``. Each is
checked before it reaches the index; a newer format than this reader knows asks for an upgrade,
and a damaged object names itself and its fix.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from datarun.errors import IntegrityError, UsageError

RUN_FORMAT = 1
"""The newest run record format this reader knows (FORMAT.md, "Runs")."""

CHANGES = "runs/changes/"
SNAPSHOTS = "runs/snapshots/"
SNAPSHOT_FORMAT = 1
"""The newest run snapshot format this reader knows (FORMAT.md, "Runs", snapshots)."""
CHANGE_RE = re.compile(r"^runs/changes/([0-9A-Za-z]{27})\.json$")
SNAPSHOT_RE = re.compile(r"^runs/snapshots/([0-9A-Za-z]{27})\.jsonl\.zst$")


def common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def ksuid_seconds(ksuid: str) -> float:
    from datarun.ids import ksuid_time

    return ksuid_time(ksuid)


def parse_snapshot(key: str, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import zstandard

    fix = "delete it (the change feed holds every run without it) and run `datarun run compact` again"
    try:
        lines = zstandard.ZstdDecompressor().decompress(raw).splitlines()
        header = orjson.loads(lines[0])
        if not isinstance(header, dict):
            raise ValueError("its first line is not a JSON object")
        fmt = header.get("format")
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > SNAPSHOT_FORMAT:
            raise UsageError(
                f"run snapshot `{key}` is format {fmt}, newer than this datarun reads ({SNAPSHOT_FORMAT}): "
                "upgrade datarun"
            )
        if fmt != SNAPSHOT_FORMAT or not isinstance(header.get("watermark"), str):
            raise ValueError("its header lacks `format` 1 and a string `watermark`")
        if SNAPSHOT_RE.match(key) is None or key != f"{SNAPSHOTS}{header['watermark']}.jsonl.zst":
            raise ValueError("its name is not its watermark")
        seen = header.get("seen")
        if not isinstance(seen, list) or not all(isinstance(k, str) and CHANGE_RE.match(k) for k in seen):
            raise ValueError("its `seen` is not a list of change keys")
        docs = [checked(orjson.loads(line), f"run snapshot `{key}` line {n}") for n, line in enumerate(lines[1:], 2)]
        if header.get("runs") != len(docs):
            raise ValueError(f"it announces {header.get('runs')} runs and holds {len(docs)} (cut short?)")
    except (zstandard.ZstdError, orjson.JSONDecodeError, ValueError, IndexError) as err:
        raise IntegrityError(f"run snapshot `{key}` is corrupt ({err}); {fix}") from None
    return header, docs


def parse_change(key: str, raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise IntegrityError(
            f"run change `{key}` is not JSON ({err}); the writer of the store must repair it"
        ) from None
    return checked(doc, f"run change `{key}`")


def checked(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise IntegrityError(f"{what} has no integer `format`")
    if fmt > RUN_FORMAT:
        raise UsageError(
            f"{what} is run record format {fmt}, newer than this datarun reads ({RUN_FORMAT}): upgrade datarun"
        )
    if not isinstance(doc.get("id"), str) or not isinstance(doc.get("version"), int):
        raise IntegrityError(f"{what} lacks a string `id` and an integer `version`")
    return doc
