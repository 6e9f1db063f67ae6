"""exekias's conventions: a run is a folder named ``YYYYMMDD-HHMMSS-title`` holding ``params.json``.

Pure parsing plus a scan over any object store (a container or bucket prefix, or a local
folder opened as a store), so ``run upload`` and ``run import`` read folders the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from datarun.errors import UsageError
from datarun.runs.model import check_json_value, iso
from datarun.store.base import ObjectStore

PARAMS_FILE = "params.json"
_NAME_RE = re.compile(r"^(\d{8})-(\d{6})-(.+)$")
NAME_HINT = "`YYYYMMDD-HHMMSS-title` (e.g. 20230609-142856-title: start date, start time, title)"


def parse_folder_name(name: str) -> tuple[str, str] | None:
    """(start as ISO UTC, title) from an exekias folder name; None if it is not one.

    exekias writes no time zone into the name; datarun reads it as UTC, and says so in FORMAT.md.
    """
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        start = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return iso(start), match.group(3)


def parse_start(text: str) -> str:
    """``--start``: ISO 8601, or exekias's ``YYYYMMDD-HHMMSS``."""
    for fmt in ("%Y%m%d-%H%M%S", "%Y%m%d%H%M%S"):
        try:
            return iso(datetime.strptime(text, fmt).replace(tzinfo=UTC))
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--start `{text}` is not a time: use ISO 8601 (2023-06-09T14:28:56Z) or YYYYMMDD-HHMMSS"
        ) from None
    return iso(moment)


def _no_constants(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def parse_params(text: str | bytes, where: str) -> dict[str, Any]:
    """The params of ``params.json``: a JSON object. Errors give the line and column to fix."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constants)
    except UnicodeDecodeError as err:
        raise UsageError(f"`{where}` is not UTF-8 text (byte {err.start}); save it as UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise UsageError(
            f"`{where}` is not JSON: line {err.lineno} column {err.colno}: {err.msg}; fix the file and retry"
        ) from None
    except ValueError as err:
        raise UsageError(f"`{where}` is not JSON: {err}; fix the file and retry") from None
    if not isinstance(value, dict):
        raise UsageError(
            f'`{where}` holds a JSON {type(value).__name__}, not an object; write the params as {{"key": value}}'
        )
    check_json_value(value, "params")
    return value


@dataclass(frozen=True, slots=True)
class FoundRun:
    """A folder of an exekias layout: its key prefix (``a/b/20230609-142856-t/``) and parsed metadata."""

    folder: str
    start: str
    title: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refusal:
    folder: str
    reason: str


def scan(source: ObjectStore) -> tuple[list[FoundRun], list[Refusal]]:
    """Every folder of ``source`` that holds ``params.json``, in key order, and the ones that
    cannot become runs (a name that is not date-time-title, params that are not a JSON object)."""
    found: list[FoundRun] = []
    refused: list[Refusal] = []
    for key in _params_keys(source):
        folder = key[: -len(PARAMS_FILE)]
        # A params.json right at the prefix: the prefix is itself one run folder.
        name = (folder or source.url).rstrip("/").rsplit("/", 1)[-1]
        parsed = parse_folder_name(name)
        if parsed is None:
            refused.append(Refusal(folder, f"the folder name `{name}` is not {NAME_HINT}"))
            continue
        try:
            raw, _ = source.read(key)  # refused here if the key is no valid object key (a space)
            params = parse_params(raw, f"{source.url}/{key}")
        except UsageError as err:
            refused.append(Refusal(folder, str(err)))
            continue
        found.append(FoundRun(folder, parsed[0], parsed[1], params))
    return found, refused


def _params_keys(source: ObjectStore) -> Iterator[str]:
    for info in source.list(""):
        if info.key == PARAMS_FILE or info.key.endswith("/" + PARAMS_FILE):
            yield info.key
