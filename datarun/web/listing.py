"""Pure paging over a manifest stream: the bundle page never reads more than it shows.

A manifest is in tree order, so a folder's whole subtree is one contiguous run of records
right after the folder itself. A page is the next ``limit`` records of that run after a
cursor (the last path shown); the first page of any bundle stops reading after ``limit``
records, which is what keeps it fast for a bundle of millions of files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from datarun.manifest import tree_key

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    name: str
    depth: int  # below the folder being shown
    kind: str
    size: int
    target: str


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    next_after: str  # cursor of the next page, "" on the last one
    found: bool  # whether the folder exists (a record of it, or anything under it)


def tree_page(records: Iterable[dict[str, Any]], folder: str, after: str, limit: int) -> Page:
    base = tree_key(folder) if folder else ()
    cursor = tree_key(after) if after else None
    rows: list[Row] = []
    found = not folder
    for raw in records:
        path = str(raw["p"])
        key = tree_key(path)
        if key[: len(base)] != base:
            if key > base:
                break  # past the folder's subtree: tree order means nothing more is inside
            continue
        found = True
        if key == base:
            if raw["k"] != "d":
                return Page([], "", False)  # a file, not a folder
            continue
        if cursor is not None and key <= cursor:
            continue
        if len(rows) == limit:
            return Page(rows, rows[-1].path, True)
        rows.append(
            Row(path, key[-1], len(key) - len(base) - 1, str(raw["k"]), int(raw.get("s", 0)), str(raw.get("l", "")))
        )
    return Page(rows, "", found)


def take_after(items: Iterator[T], key_of: Any, after: str, limit: int) -> tuple[list[T], str]:
    """``limit`` items whose path sorts after ``after`` (tree order), and the next cursor."""
    cursor = tree_key(after) if after else None
    out: list[T] = []
    for item in items:
        path = key_of(item)
        if cursor is not None and tree_key(path) <= cursor:
            continue
        if len(out) == limit:
            return out, key_of(out[-1])
        out.append(item)
    return out, ""
