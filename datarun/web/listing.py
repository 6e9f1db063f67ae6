"""Pure paging over a manifest stream: the bundle page never reads more than it shows.

A manifest is in tree order, so a folder's whole subtree is one contiguous run of records
right after the folder itself. A page is the next ``limit`` records of that run after a
cursor (the last path shown); the first page of any bundle stops reading after ``limit``
records, which is what keeps it fast for a bundle of millions of files.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
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


class Listing:
    """A bundle's whole listing in memory, for pages past the first: bisect instead of a scan.

    Built once per manifest (bundles are immutable) the first time a page past the first one is
    asked for; the first page of a bundle never waits for it.
    """

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.keys: list[tuple[str, ...]] = []
        self.rows: list[tuple[str, str, int, str]] = []  # path, kind, size, link target
        for raw in records:
            path = str(raw["p"])
            self.keys.append(tree_key(path))
            self.rows.append((path, str(raw["k"]), int(raw.get("s", 0)), str(raw.get("l", ""))))

    def page(self, folder: str, after: str, limit: int) -> Page:
        base = tree_key(folder) if folder else ()
        at = bisect.bisect_left(self.keys, base)
        if folder:
            if at == len(self.keys) or self.keys[at][: len(base)] != base:
                return Page([], "", False)
            if self.keys[at] == base and self.rows[at][1] != "d":
                return Page([], "", False)
        start = bisect.bisect_right(self.keys, base) if folder else 0
        if after:
            start = max(start, bisect.bisect_right(self.keys, tree_key(after)))
        rows: list[Row] = []
        for i in range(start, len(self.keys)):
            key = self.keys[i]
            if key[: len(base)] != base:
                break
            if len(rows) == limit:
                return Page(rows, rows[-1].path, True)
            path, kind, size, target = self.rows[i]
            rows.append(Row(path, key[-1], len(key) - len(base) - 1, kind, size, target))
        return Page(rows, "", True)


class ListingCache:
    """The last few bundles' listings, by manifest id, up to ``max_entries`` entries each."""

    def __init__(self, keep: int = 4, max_entries: int = 2_000_000) -> None:
        self.keep = keep
        self.max_entries = max_entries
        self._items: OrderedDict[str, Listing] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, manifest: str, entries: int, records: Callable[[], Iterable[dict[str, Any]]]) -> Listing | None:
        if entries > self.max_entries:
            return None  # too big to hold: pages are scanned from the manifest instead
        with self._lock:
            found = self._items.get(manifest)
            if found is not None:
                self._items.move_to_end(manifest)
                return found
        built = Listing(records())
        with self._lock:
            self._items[manifest] = built
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return built
