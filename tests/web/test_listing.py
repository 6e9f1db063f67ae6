"""Paging a manifest: the streamed first page and the in-memory listing agree everywhere."""

from __future__ import annotations

import itertools
from typing import Any

from datarun.manifest import tree_key
from datarun.web.listing import Listing, tree_page


def records() -> list[dict[str, Any]]:
    paths = {"a": "d", "a/b": "d", "a/b/c.txt": "f", "a/b/d.txt": "f", "a/e": "f", "a.txt": "f", "z": "d"}
    paths |= {f"z/{i:02d}": "f" for i in range(7)}
    paths["link"] = "l"
    out = [{"p": p, "k": k, "s": len(p), "l": "a.txt" if k == "l" else ""} for p, k in paths.items()]
    return sorted(out, key=lambda r: tree_key(r["p"]))


def test_streamed_and_indexed_pages_are_the_same() -> None:
    listing = Listing(records())
    folders = ["", "a", "a/b", "z", "a/e", "nope", "a/b/c.txt"]
    afters = ["", "a", "a/b/c.txt", "a/e", "z/03", "zz"]
    for folder, after, limit in itertools.product(folders, afters, (1, 2, 3, 100)):
        assert listing.page(folder, after, limit) == tree_page(records(), folder, after, limit), (folder, after, limit)


def test_walking_the_pages_visits_every_entry_once() -> None:
    for limit in (1, 2, 5):
        seen, after = [], ""
        while True:
            page = tree_page(records(), "", after, limit)
            seen += [row.path for row in page.rows]
            if not page.next_after:
                break
            after = page.next_after
        assert seen == [r["p"] for r in records()]


def test_a_file_or_a_missing_folder_is_not_found() -> None:
    assert not tree_page(records(), "a/e", "", 10).found
    assert not tree_page(records(), "q", "", 10).found
    page = tree_page(records(), "a/b", "", 10)
    assert [(r.name, r.depth) for r in page.rows] == [("c.txt", 0), ("d.txt", 0)]
