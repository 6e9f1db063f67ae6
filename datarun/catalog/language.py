"""The run query language: Cosmos DB SQL scalar expressions over ``run.*``, as exekias uses them.

A query is parsed by a Lark grammar into the small immutable tree below; it is never
evaluated as code and never spliced into SQL (``translate`` binds every constant). Sugar is
removed at parse time so that every consumer (the SQL translator, the Python oracle) handles
the same few node kinds: ``x IN (a, b)`` becomes ``x = a OR x = b``, ``x BETWEEN a AND b``
becomes ``x >= a AND x <= b``, and ``x LIKE p`` becomes the function ``LIKE(x, p)``.

Two kinds of node exist: *values* (a path, a constant, ``LOWER``/``UPPER`` of a value) and
*conditions* (comparisons, AND/OR/NOT, the boolean functions). A value used where a condition
is expected is true only when it is the boolean ``true``, as in Cosmos. A condition used as a
comparison operand is refused: it would need booleans-as-values, which nobody asks of a filter.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datarun.errors import UsageError

if TYPE_CHECKING:
    from lark import Lark

Scalar = str | int | float | bool | None

_GRAMMAR = r"""
?start: or_expr

?or_expr: and_expr
    | or_expr OR and_expr                                  -> or_
?and_expr: not_expr
    | and_expr AND not_expr                                -> and_
?not_expr: predicate
    | NOT not_expr                                         -> not_
?predicate: operand
    | operand COMP operand                                 -> compare
    | operand NOT? IN "(" operand ("," operand)* ")"       -> in_
    | operand NOT? BETWEEN operand AND operand             -> between
    | operand NOT? LIKE operand                            -> like

?operand: path
    | literal
    | call
    | "(" or_expr ")"

path: NAME segment*
?segment: "." NAME                                         -> key
    | "[" STRING "]"                                       -> key
    | "[" INT "]"                                          -> index

call: NAME "(" [or_expr ("," or_expr)*] ")"

?literal: STRING                                           -> string
    | SIGNED_NUMBER                                        -> number
    | TRUE                                                 -> true
    | FALSE                                                -> false
    | NULL                                                 -> null

OR.2: /or\b/i
AND.2: /and\b/i
NOT.2: /not\b/i
IN.2: /in\b/i
BETWEEN.2: /between\b/i
LIKE.2: /like\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
NULL.2: /null\b/i
COMP: "=" | "!=" | "<>" | "<=" | ">=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
INT: /[0-9]+/
SIGNED_NUMBER: /-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?/
STRING: /'(\\.|[^'\\])*'/ | /"(\\.|[^"\\])*"/

%import common.WS
%ignore WS
"""

# -- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """``run.a.b[0]["c d"]``: the segments after ``run``; ints index arrays, strings key objects."""

    segments: tuple[str | int, ...]

    @property
    def key(self) -> str:
        return path_key(self.segments)


@dataclass(frozen=True, slots=True)
class Const:
    value: Scalar


@dataclass(frozen=True, slots=True)
class Call:
    """A function; ``LIKE`` is one too. Names are upper-case and checked against FUNCTIONS."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # one of = != < <= > >=
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


Node = Path | Const | Call | Compare | And | Or | Not

VALUE_FUNCTIONS = {"LOWER": 1, "UPPER": 1}
"""Functions that return a value (a string), with their arity."""

CONDITION_FUNCTIONS: dict[str, tuple[int, int]] = {
    "STARTSWITH": (2, 3),
    "ENDSWITH": (2, 3),
    "CONTAINS": (2, 3),
    "LIKE": (2, 2),
    "IS_DEFINED": (1, 1),
    "IS_NULL": (1, 1),
    "IS_BOOL": (1, 1),
    "IS_NUMBER": (1, 1),
    "IS_STRING": (1, 1),
    "IS_ARRAY": (1, 1),
    "IS_OBJECT": (1, 1),
    "ARRAY_CONTAINS": (2, 2),
}
"""Functions that return a condition, with their (min, max) arity."""


def is_value(node: Node) -> bool:
    return isinstance(node, Path | Const) or (isinstance(node, Call) and node.name in VALUE_FUNCTIONS)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def path_key(segments: tuple[str | int, ...]) -> str:
    """The canonical text of a path, as the index stores it: ``params.model.lr``,
    ``params["key with-dash"]``, ``tags[0]``. Keys that are not identifiers are JSON-quoted, so
    two different paths never share a text (a key may contain dots or brackets)."""
    out: list[str] = []
    for seg in segments:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif _IDENT.match(seg):
            out.append(f".{seg}" if out else seg)
        else:
            out.append("[" + _quote(seg) + "]")
    return "".join(out)


def _quote(text: str) -> str:
    import orjson

    return orjson.dumps(text).decode()


# -- errors ---------------------------------------------------------------------------------


class QuerySyntaxError(UsageError):
    """A query that is not in the language: names the position (1-based column) and the token."""

    def __init__(self, query: str, position: int, token: str, detail: str) -> None:
        shown = token if len(token) <= 40 else token[:37] + "..."
        super().__init__(
            f"query syntax error at position {position + 1}, near `{shown}`: {detail}; "
            "see `datarun run query --help` (example: \"run.params.lr > 0.01 AND run.phase = 'Succeeded'\")"
        )
        self.query = query
        self.position = position
        self.token = token


# -- parsing --------------------------------------------------------------------------------


@functools.cache
def _parser() -> Lark:
    import lark

    from datarun.config import cache_dir

    # Building the LALR tables costs a cold `run query` ~0.1 s; Lark caches them in a file of
    # ours (not a shared temp dir: the cache is a pickle) and checks the grammar's hash on load.
    cache: str | bool = False
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        cache = str(folder / f"query-grammar-{lark.__version__}.lark")
    except OSError:
        pass
    return lark.Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False, cache=cache)


def parse(query: str) -> Node:
    """Parse a condition (a ``WHERE`` filter)."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

    if not query.strip():
        raise QuerySyntaxError(query, 0, "", "the query is empty")
    try:
        tree = _parser().parse(query)
    except UnexpectedToken as err:
        if err.token.type == "$END":
            raise QuerySyntaxError(query, len(query), "end of query", "the query ends too early") from None
        expected = ", ".join(sorted(_pretty(t) for t in err.expected)[:8])
        pos = err.token.start_pos if err.token.start_pos is not None else 0
        raise QuerySyntaxError(query, pos, str(err.token), f"unexpected token; expected one of {expected}") from None
    except UnexpectedCharacters as err:
        at = int(err.pos_in_stream or 0)
        rest = query[at:]
        if rest[:1] in ("'", '"'):
            raise QuerySyntaxError(query, at, rest[:20], "unterminated string") from None
        raise QuerySyntaxError(query, at, rest[:1], "unexpected character") from None
    except UnexpectedEOF:
        raise QuerySyntaxError(query, len(query), "end of query", "the query ends too early") from None
    except UnexpectedInput as err:  # pragma: no cover - the three above are all Lark raises for LALR
        raise QuerySyntaxError(query, getattr(err, "pos_in_stream", 0) or 0, "", str(err)) from None
    return _Builder(query).build(tree)


def parse_value(query: str) -> Node:
    """Parse an ``--order-by`` expression: a value (a path, usually)."""
    node = parse(query)
    if not is_value(node):
        raise QuerySyntaxError(query, 0, query, "--order-by takes a value such as run.params.lr, not a condition")
    return node


_PRETTY = {"$END": "end of query", "LPAR": "(", "RPAR": ")", "COMMA": ",", "DOT": ".", "LSQB": "[", "RSQB": "]"}


def _pretty(terminal: str) -> str:
    return _PRETTY.get(terminal, terminal)


class _Builder:
    """Lark tree -> Node, checking what the grammar cannot (root name, functions, arity)."""

    def __init__(self, query: str) -> None:
        self.query = query

    def fail(self, item: Any, token: str, detail: str) -> QuerySyntaxError:
        pos = getattr(getattr(item, "meta", None), "start_pos", None)
        if pos is None:
            pos = getattr(item, "start_pos", 0) or 0
        return QuerySyntaxError(self.query, pos, token, detail)

    def build(self, tree: Any) -> Node:
        node = self.node(tree)
        return node

    def node(self, item: Any) -> Node:
        from lark import Token, Tree

        if isinstance(item, Token):
            raise self.fail(item, str(item), "unexpected token")
        assert isinstance(item, Tree)
        kind = str(item.data)
        ch = item.children
        if kind == "or_":
            return Or(self.cond(ch[0]), self.cond(ch[2]))
        if kind == "and_":
            return And(self.cond(ch[0]), self.cond(ch[2]))
        if kind == "not_":
            return Not(self.cond(ch[1]))
        if kind == "compare":
            op = {"<>": "!="}.get(str(ch[1]), str(ch[1]))
            return Compare(op, self.value(ch[0]), self.value(ch[2]))
        if kind == "in_":
            negated = _has(ch, "NOT")
            subject = self.value(ch[0])
            options = [self.value(c) for c in ch[1:] if not _is_token(c)]
            result: Node = Compare("=", subject, options[0])
            for option in options[1:]:
                result = Or(result, Compare("=", subject, option))
            return Not(result) if negated else result
        if kind == "between":
            negated = _has(ch, "NOT")
            values = [self.value(c) for c in ch if not _is_token(c)]
            subject, low, high = values
            result = And(Compare(">=", subject, low), Compare("<=", subject, high))
            return Not(result) if negated else result
        if kind == "like":
            negated = _has(ch, "NOT")
            subject, pattern = (self.value(c) for c in ch if not _is_token(c))
            result = Call("LIKE", (subject, pattern))
            return Not(result) if negated else result
        if kind == "path":
            return self.path(item)
        if kind == "call":
            return self.call(item)
        if kind == "string":
            return Const(_unquote(str(ch[0])))
        if kind == "number":
            return Const(_number(str(ch[0])))
        if kind == "true":
            return Const(True)
        if kind == "false":
            return Const(False)
        if kind == "null":
            return Const(None)
        raise self.fail(item, kind, "unsupported expression")  # pragma: no cover - grammar and builder agree

    def cond(self, item: Any) -> Node:
        return self.node(item)

    def value(self, item: Any) -> Node:
        node = self.node(item)
        if not is_value(node):
            raise self.fail(
                item, self.query[item.meta.start_pos : item.meta.end_pos], "a condition cannot be compared; use a value"
            )
        return node

    def path(self, item: Any) -> Path:
        root, *rest = item.children
        if str(root) != "run":
            raise self.fail(root, str(root), "paths start with `run.`, as in run.params.lr")
        segments: list[str | int] = []
        for seg in rest:
            token = seg.children[0]
            if seg.data == "index":
                segments.append(int(str(token)))
            elif token.type == "STRING":
                segments.append(_unquote(str(token)))
            else:
                segments.append(str(token))
        return Path(tuple(segments))

    def call(self, item: Any) -> Call:
        name_token, *args = item.children
        name = str(name_token).upper()
        nodes = tuple(self.node(a) for a in args if a is not None)
        if name in VALUE_FUNCTIONS:
            low = high = VALUE_FUNCTIONS[name]
        elif name in CONDITION_FUNCTIONS and name != "LIKE":
            low, high = CONDITION_FUNCTIONS[name]
        else:
            known = ", ".join(sorted({*VALUE_FUNCTIONS, *CONDITION_FUNCTIONS} - {"LIKE"}))
            raise self.fail(name_token, str(name_token), f"unknown function; known functions are {known}")
        if not low <= len(nodes) <= high:
            want = str(low) if low == high else f"{low} or {high}"
            raise self.fail(name_token, str(name_token), f"{name} takes {want} arguments, not {len(nodes)}")
        for arg in nodes:
            if not is_value(arg):
                raise self.fail(name_token, str(name_token), f"the arguments of {name} are values, not conditions")
        if name in ("STARTSWITH", "ENDSWITH", "CONTAINS") and len(nodes) == 3:
            flag = nodes[2]
            if not (isinstance(flag, Const) and isinstance(flag.value, bool)):
                raise self.fail(name_token, str(name_token), f"the third argument of {name} is true or false")
        if name == "ARRAY_CONTAINS":
            if not isinstance(nodes[0], Path):
                raise self.fail(name_token, str(name_token), "ARRAY_CONTAINS searches a path, as in run.tags")
            if not isinstance(nodes[1], Const):
                raise self.fail(name_token, str(name_token), "ARRAY_CONTAINS looks for a constant, as in 'gpu'")
        return Call(name, nodes)


def _is_token(item: Any) -> bool:
    from lark import Token

    return isinstance(item, Token) and item.type in ("NOT", "IN", "BETWEEN", "AND", "LIKE")


def _has(children: list[Any], terminal: str) -> bool:
    from lark import Token

    return any(isinstance(c, Token) and c.type == terminal for c in children)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0", "/": "/", "\\": "\\", "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and re.match(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _number(text: str) -> int | float:
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return float(text)
