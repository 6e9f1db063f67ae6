"""A run document as rows of (path, type, text, number): what makes nested paths indexable.

Every node of the document gets a row, objects and arrays included (so IS_DEFINED and IS_ARRAY
work on them). Scalars carry their value in ``text`` (strings; ``true``/``false``; ``null``)
or ``num`` (numbers), so one index on (path, type, num) answers numeric ranges and one on
(path, type, text) answers equality and prefixes; MLflow keeps params as strings only, which is
why it cannot do a range on them. Scalar elements of an array get a second row under the path
``<array>[*]``, which is what ARRAY_CONTAINS looks up.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from datarun.catalog.language import path_key
from datarun.catalog.oracle import ARRAY, BOOL, NULL, NUMBER, OBJECT, STRING

Row = tuple[str, int, str | None, float | None]


def scalar_row(value: Any) -> tuple[int, str | None, float | None]:
    if value is None:
        return NULL, "null", None
    if isinstance(value, bool):
        return BOOL, "true" if value else "false", None
    if isinstance(value, int | float):
        return NUMBER, None, float(value)
    if isinstance(value, str):
        return STRING, value, None
    if isinstance(value, list):
        return ARRAY, None, None
    return OBJECT, None, None


@functools.lru_cache(maxsize=4096)
def _segment(name: str, root: bool) -> str:
    # Same text as language.path_key for one key, so a query's path finds the rows.
    text = path_key((name,))
    return text if root or text.startswith("[") else "." + text


def flatten(doc: Mapping[str, Any]) -> Iterator[Row]:
    # Keys are built by appending to the parent's text: a run has ~50 nodes and 100k runs
    # are flattened on a rebuild, so the path text is never recomputed from segments.
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        key, value = stack.pop()
        kind, text, num = scalar_row(value)
        yield key, kind, text, num
        if kind == OBJECT:
            root = not key
            for name, child in value.items():
                stack.append((key + _segment(str(name), root), child))
        elif kind == ARRAY:
            star = key + "[*]"
            for i, child in enumerate(value):
                stack.append((f"{key}[{i}]", child))
                if not isinstance(child, list | dict):
                    yield (star, *scalar_row(child))
