"""A plain-Python evaluator of the query tree over run documents: the meaning of the language.

The SQL translations must give the answers this module gives; the property test checks them
against each other on a generated corpus. The rules, after Cosmos DB:

- JSON has six types (null, boolean, number, string, array, object) plus *undefined*, the value
  of a missing path. A condition is true, false or undefined, and a filter keeps a run only
  when it is true.
- A comparison between two values of different types, or with undefined, is undefined.
  ``=``/``!=`` compare null, booleans, numbers and strings; ``<``, ``<=``, ``>``, ``>=`` compare
  numbers and strings (strings by code point). Arrays and objects do not compare.
- AND/OR/NOT are three-valued (Kleene): ``false AND undefined`` is false, ``true OR undefined``
  is true, ``NOT undefined`` is undefined.
- String functions of a non-string are undefined; ``IS_*`` functions are always true or false.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from datarun.catalog.language import And, Call, Compare, Const, Node, Not, Or, Path


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Any = _Undefined()

# Cosmos's order of types in ORDER BY; also the type codes the index stores.
NULL, BOOL, NUMBER, STRING, ARRAY, OBJECT = range(6)


def json_type(value: Any) -> int | None:
    """The type code of a JSON value, or None for undefined."""
    if value is UNDEFINED:
        return None
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return ARRAY
    return OBJECT


def resolve(doc: Mapping[str, Any], segments: Iterable[str | int]) -> Any:
    current: Any = doc
    for seg in segments:
        if isinstance(seg, int):
            if not isinstance(current, list) or seg >= len(current):
                return UNDEFINED
            current = current[seg]
        else:
            if not isinstance(current, dict) or seg not in current:
                return UNDEFINED
            current = current[seg]
    return current


def value_of(node: Node, doc: Mapping[str, Any]) -> Any:
    if isinstance(node, Path):
        return resolve(doc, node.segments)
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Call) and node.name in ("LOWER", "UPPER"):
        inner = value_of(node.args[0], doc)
        if not isinstance(inner, str):
            return UNDEFINED
        return inner.lower() if node.name == "LOWER" else inner.upper()
    raise TypeError(f"not a value: {node!r}")  # the parser only lets values here


def _ordered(op: str, a: Any, b: Any) -> bool:
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def compare(op: str, a: Any, b: Any) -> bool | None:
    ta, tb = json_type(a), json_type(b)
    if ta is None or ta != tb or ta in (ARRAY, OBJECT):
        return None
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if ta not in (NUMBER, STRING):
        return None
    return _ordered(op, a, b)


def like_regex(pattern: str) -> re.Pattern[str]:
    """SQL LIKE without an escape character: ``%`` any run, ``_`` one character, the rest literal."""
    parts = ["".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)]
    return re.compile(parts[0], re.DOTALL)


def truth(node: Node, doc: Mapping[str, Any]) -> bool | None:
    """True, False or None (undefined) for a condition over one document."""
    if isinstance(node, And):
        left, right = truth(node.left, doc), truth(node.right, doc)
        if left is False or right is False:
            return False
        return True if left is True and right is True else None
    if isinstance(node, Or):
        left, right = truth(node.left, doc), truth(node.right, doc)
        if left is True or right is True:
            return True
        return False if left is False and right is False else None
    if isinstance(node, Not):
        inner = truth(node.operand, doc)
        return None if inner is None else not inner
    if isinstance(node, Compare):
        return compare(node.op, value_of(node.left, doc), value_of(node.right, doc))
    if isinstance(node, Call) and node.name not in ("LOWER", "UPPER"):
        return _function(node, doc)
    value = value_of(node, doc)
    return value if isinstance(value, bool) else None


_TYPE_TESTS = {"IS_NULL": NULL, "IS_BOOL": BOOL, "IS_NUMBER": NUMBER, "IS_STRING": STRING, "IS_ARRAY": ARRAY}


def _function(node: Call, doc: Mapping[str, Any]) -> bool | None:
    name = node.name
    args = [value_of(a, doc) for a in node.args]
    if name == "IS_DEFINED":
        return args[0] is not UNDEFINED
    if name in _TYPE_TESTS:
        return json_type(args[0]) == _TYPE_TESTS[name]
    if name == "IS_OBJECT":
        return json_type(args[0]) == OBJECT
    if name == "ARRAY_CONTAINS":
        array, wanted = args
        if not isinstance(array, list):
            return None
        return any(compare("=", item, wanted) is True for item in array)
    text, other = args[0], args[1]
    if not isinstance(text, str) or not isinstance(other, str):
        return None
    if len(args) == 3 and args[2] is True:
        text, other = text.lower(), other.lower()
    if name == "STARTSWITH":
        return text.startswith(other)
    if name == "ENDSWITH":
        return text.endswith(other)
    if name == "CONTAINS":
        return other in text
    if name == "LIKE":
        return like_regex(other).fullmatch(text) is not None
    raise TypeError(f"unknown function {name}")  # the parser refuses these first


def sort_key(value: Any) -> tuple[int, Any]:
    """Cosmos's ORDER BY across types: undefined < null < booleans < numbers < strings < arrays/objects."""
    kind = json_type(value)
    if kind is None:
        return (-1, 0)
    if kind in (BOOL, NUMBER, STRING):
        return (kind, value)
    return (kind, 0)


def select(
    docs: Iterable[Mapping[str, Any]],
    where: Node | None,
    *,
    order_by: Node | None = None,
    descending: bool = True,
    top: int | None = 10,
    include_hidden: bool = False,
) -> list[Mapping[str, Any]]:
    """What ``Index.query`` returns, computed by brute force."""
    kept = [
        d
        for d in docs
        if (include_hidden or d.get("hidden") is not True) and (where is None or truth(where, d) is True)
    ]
    # Ties (and the default order) go newest first: by start, then by the time-sortable id.
    kept.sort(key=lambda d: (str(d.get("start", "")), str(d.get("id", ""))), reverse=True)
    if order_by is not None:
        kept.sort(key=lambda d: sort_key(value_of(order_by, d)), reverse=descending)
    return kept if top is None else kept[:top]
