"""Where lineage lives in the store (FORMAT.md, "Lineage"), and the node names the graph uses.

A node is named by a short text that sorts and prints well and is also a store key suffix:
``bundle/<repo>/<bundle-id>``, ``run/<run-id>``, ``record/<record-id>``. Repo names and KSUIDs
hold no ``/``, so the split back is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from datarun import layout as store_layout
from datarun.errors import IntegrityError, UsageError
from datarun.ids import is_ksuid
from datarun.model import validate_repo_name

FORMAT = 1
"""The newest lineage record format this datarun reads and writes."""

# The prefixes are datarun.layout's, the one list of every kind of key.
RECORDS = store_layout.LINEAGE_RECORDS_PREFIX
EVENTS = store_layout.LINEAGE_EVENTS_PREFIX
MARKS = store_layout.LINEAGE_MARKS_PREFIX
DONE = store_layout.LINEAGE_DONE_PREFIX

TYPES = ("bundle", "run", "record")


@dataclass(frozen=True, slots=True)
class NodeId:
    type: str  # bundle | run | record
    id: str  # bundle, run or record id
    repo: str = ""  # bundles only

    @property
    def key(self) -> str:
        return f"bundle/{self.repo}/{self.id}" if self.type == "bundle" else f"{self.type}/{self.id}"

    def __str__(self) -> str:
        return f"{self.repo}@{self.id}" if self.type == "bundle" else f"{self.type}:{self.id}"


def bundle_node(repo: str, bundle_id: str) -> NodeId:
    return NodeId("bundle", bundle_id, repo)


def parse_node_key(key: str) -> NodeId:
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "bundle":
        return NodeId("bundle", parts[2], parts[1])
    if len(parts) == 2 and parts[0] in ("run", "record"):
        return NodeId(parts[0], parts[1])
    raise IntegrityError(f"lineage node `{key}` is not bundle/<repo>/<id>, run/<id> or record/<id>")


def parse_parent(text: str) -> NodeId:
    """``repo@bundle-id``, ``run:<id>`` or ``record:<id>`` (the ``--derived-from`` forms)."""
    if text.startswith(("run:", "record:")):
        kind, _, ident = text.partition(":")
        if not is_ksuid(ident):
            raise UsageError(f"--derived-from `{text}`: `{ident}` is not a {kind} id (27 letters and digits)")
        return NodeId(kind, ident)
    repo, at, ident = text.partition("@")
    if not at or not is_ksuid(ident):
        raise UsageError(
            f"--derived-from `{text}`: write repo@bundle-id (a 27-character id), run:<run-id> or record:<record-id>"
        )
    validate_repo_name(repo)
    return bundle_node(repo, ident)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def loads(key: str, raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise IntegrityError(f"lineage record `{key}` is not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"lineage record `{key}` is not a JSON object")
    fmt = doc.get("format")
    if isinstance(fmt, int) and fmt > FORMAT:
        raise UsageError(f"lineage record `{key}` is format {fmt}, newer than this datarun reads ({FORMAT}): upgrade")
    return doc
