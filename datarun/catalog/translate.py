"""Query tree -> SQL over the flattened rows, with every constant bound as a parameter.

SQL's NULL logic is not Cosmos's undefined (``NOT (x > 5)`` must stay unknown when ``x`` is a
string), so the translator never relies on it. Each condition gets two translations: ``T(e)``,
"e is true", and ``F(e)``, "e is false", both plain two-valued SQL; NOT swaps them and De
Morgan pushes them down (``T(NOT a) = F(a)``, ``F(a AND b) = F(a) OR F(b)``). A leaf becomes
``r.rid IN (SELECT ... FROM run_params WHERE pid = <path> AND type = <t> AND num > :p)``, which
the (pid, type, num) and (pid, type, text) indexes answer; its F side uses the opposite operator
under the same type test, so a wrong type or a missing path is neither true nor false.

The SQL text is made only of this module's own strings; user text reaches the database as
bound values (``:p0``, ``:p1`` ...), whatever it contains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from datarun.catalog import oracle
from datarun.catalog.language import And, Call, Compare, Const, Node, Not, Or, Path, is_value
from datarun.catalog.oracle import ARRAY, BOOL, NULL, NUMBER, OBJECT, STRING

_TRUE, _FALSE = "1=1", "1=0"
_SQL_OP = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_INVERSE = {"=": "!=", "!=": "=", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_FLIPPED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_TYPE_TESTS = {"IS_NULL": NULL, "IS_BOOL": BOOL, "IS_NUMBER": NUMBER, "IS_STRING": STRING}
_TYPE_TESTS.update({"IS_ARRAY": ARRAY, "IS_OBJECT": OBJECT})


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str  # "sqlite" or "postgresql"

    def contains(self, text: str, sub: str) -> str:
        return f"instr({text}, {sub})" if self.name == "sqlite" else f"strpos({text}, {sub})"

    def like(self, text: str, pattern: str, negated: bool) -> str:
        op = "NOT LIKE" if negated else "LIKE"
        # PostgreSQL's LIKE escapes with a backslash by default; Cosmos's (and SQLite's
        # without ESCAPE) does not. SQLite's case-insensitivity is turned off per connection.
        return f"{text} {op} {pattern}" + (" ESCAPE ''" if self.name == "postgresql" else "")

    def render(self, sql: str) -> str:
        """``:p0`` placeholders in this dialect's parameter style."""
        if self.name == "sqlite":
            return sql
        return re.sub(r":(p\d+)\b", r"%(\1)s", sql)


SQLITE = Dialect("sqlite")
POSTGRESQL = Dialect("postgresql")


@dataclass(frozen=True, slots=True)
class Sql:
    text: str
    params: dict[str, Any]
    # True when the statement returns run rids, not documents: with --order-by every match is
    # sorted, and carrying each (kilobyte-sized) document through the sort would dominate.
    rids: bool = False
    # The bound parameter holding the LIMIT when a query is several statements run in turn:
    # the runner sets it to what the statements before it left of ``top``.
    limit: str | None = None


@dataclass(frozen=True, slots=True)
class _Rids:
    """``r.rid IN (<select>)``, kept apart so that sibling conditions can be merged."""

    select: str
    compound: bool = False

    def __str__(self) -> str:
        return f"r.rid IN ({self.select})"


def _joined(parts: list[str | _Rids], conjunction: bool) -> str | _Rids:
    """``a AND b`` (or OR) over conditions; the plain ``r.rid IN (...)`` ones become one
    ``r.rid IN (A INTERSECT B)`` (UNION for OR). Two IN lists probed row by row cost a lookup
    into ``runs`` for every rid of the larger list (5k of them at 100k runs, ~10 ms); the
    database intersects the two lists of rids without touching ``runs`` (~3 ms)."""
    simple = [p for p in parts if isinstance(p, _Rids) and not p.compound]
    if len(simple) > 400:
        simple = []  # SQLite allows at most 500 terms in one compound SELECT: leave such a chain as it is
    rest = [str(p) for p in parts if not any(p is q for q in simple)]
    if len(simple) >= 2:
        merged: str | _Rids = _Rids(f" {'INTERSECT' if conjunction else 'UNION'} ".join(p.select for p in simple), True)
    elif simple:
        merged = simple[0]
    else:
        return "(" + f" {'AND' if conjunction else 'OR'} ".join(rest) + ")"
    if not rest:
        return merged
    return "(" + f" {'AND' if conjunction else 'OR'} ".join([str(merged), *rest]) + ")"


@dataclass(frozen=True, slots=True)
class _Val:
    """A value inside a leaf: SQL for its type code, text and number. ``kind`` is the type
    when it is known without a row (a constant), ``-1`` when it is known to be undefined."""

    kind: int | None
    t: str
    x: str
    n: str


_UNDEF = _Val(-1, "NULL", "NULL", "NULL")


@dataclass
class _Translator:
    dialect: Dialect
    params: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def pid(self, key: str) -> str:
        return f"(SELECT pid FROM run_paths WHERE path = {self.bind(key)})"

    # -- conditions -------------------------------------------------------------------------

    def true(self, node: Node) -> str:
        return str(self._cond(node, want=True))

    def _cond(self, node: Node, *, want: bool) -> str | _Rids:
        if isinstance(node, Not):
            return self._cond(node.operand, want=not want)
        if isinstance(node, And | Or):
            # T(a AND b) = T(a) AND T(b); F(a AND b) = F(a) OR F(b); dually for OR.
            conjunction = isinstance(node, And) == want
            parts: list[str | _Rids] = []
            self._gather(node, type(node), want, parts)
            return _joined(parts, conjunction)
        paths = _paths(node)
        if not paths:
            # Constant: the oracle decides, and the database sees only 1=1 or 1=0.
            verdict = oracle.truth(node, {})
            return _TRUE if verdict is want else _FALSE
        if isinstance(node, Call) and node.name == "ARRAY_CONTAINS":
            return self._array_contains(node, want=want)
        aliases = {key: f"a{i}" for i, key in enumerate(paths)}
        if isinstance(node, Call) and (node.name == "IS_DEFINED" or node.name in _TYPE_TESTS):
            # Always true or false: F is the complement of T.
            value = self.value(node.args[0], aliases)
            test = f"{value.t} IS NOT NULL" if node.name == "IS_DEFINED" else f"{value.t} = {_TYPE_TESTS[node.name]}"
            return self._leaf(aliases, test, negated=not want)
        return self._leaf(aliases, self._test(node, aliases, want=want), negated=False)

    def _gather(self, node: Node, kind: type, want: bool, parts: list[str | _Rids]) -> None:
        """The operands of a chain of ANDs (or of ORs), however the parser nested them."""
        if isinstance(node, kind):
            assert isinstance(node, And | Or)
            self._gather(node.left, kind, want, parts)
            self._gather(node.right, kind, want, parts)
        else:
            parts.append(self._cond(node, want=want))

    def _leaf(self, aliases: dict[str, str], test: str, *, negated: bool) -> str | _Rids:
        if test == _FALSE:
            return _TRUE if negated else _FALSE
        keys = list(aliases)
        first = aliases[keys[0]]
        joins = "".join(
            f" JOIN run_params {aliases[k]} ON {aliases[k]}.rid = {first}.rid AND {aliases[k]}.pid = {self.pid(k)}"
            for k in keys[1:]
        )
        sub = f"SELECT {first}.rid FROM run_params {first}{joins} WHERE {first}.pid = {self.pid(keys[0])} AND {test}"
        return f"r.rid NOT IN ({sub})" if negated else _Rids(sub)

    def _array_contains(self, node: Call, *, want: bool) -> str | _Rids:
        array, wanted = node.args
        assert isinstance(array, Path) and isinstance(wanted, Const)  # the parser checks both
        kind, text, num = _scalar(wanted.value)
        star = array.key + "[*]"
        match = f"e.type = {kind} AND " + (
            f"e.num = {self.bind(num)}" if kind == NUMBER else f"e.text = {self.bind(text)}"
        )
        found = _Rids(f"SELECT e.rid FROM run_params e WHERE e.pid = {self.pid(star)} AND {match}")
        if want:
            return found
        is_array = f"r.rid IN (SELECT e.rid FROM run_params e WHERE e.pid = {self.pid(array.key)} AND e.type = {ARRAY})"
        return f"({is_array} AND NOT {found})"

    def _test(self, node: Node, aliases: dict[str, str], *, want: bool) -> str:
        """The condition on one joined row that makes ``node`` true (want) or false (not want)."""
        if isinstance(node, Compare):
            op = node.op if want else _INVERSE[node.op]
            return self._compare(op, self.value(node.left, aliases), self.value(node.right, aliases))
        if isinstance(node, Call):
            return self._string_function(node, aliases, want=want)
        # A value used as a condition: true only when it is the boolean true.
        value = self.value(node, aliases)
        if value.kind is not None:
            return _FALSE
        return f"{value.t} = {BOOL} AND {value.x} = '{'true' if want else 'false'}'"

    def _compare(self, op: str, a: _Val, b: _Val) -> str:
        if a.kind == -1 or b.kind == -1:
            return _FALSE
        if a.kind is not None and b.kind is None:
            a, b, op = b, a, _FLIPPED[op]
        sql_op = _SQL_OP[op]
        if b.kind is not None:  # a is a row, b a constant of a known type
            kind = b.kind
            if kind == NUMBER:
                return f"{a.t} = {NUMBER} AND {a.n} {sql_op} {b.n}"
            if kind == STRING:
                return f"{a.t} = {STRING} AND {a.x} {sql_op} {b.x}"
            if kind in (NULL, BOOL) and op in ("=", "!="):
                return f"{a.t} = {kind} AND {a.x} {sql_op} {b.x}"
            return _FALSE
        eq = (
            f" OR ({a.t} IN ({NULL}, {BOOL}) AND {a.x} {sql_op} {b.x})" if op in ("=", "!=") else ""
        )  # null and booleans compare by their text; only for = and !=
        return (
            f"{a.t} = {b.t} AND (({a.t} = {NUMBER} AND {a.n} {sql_op} {b.n})"
            f" OR ({a.t} = {STRING} AND {a.x} {sql_op} {b.x}){eq})"
        )

    def _string_function(self, node: Call, aliases: dict[str, str], *, want: bool) -> str:
        text, other = self.value(node.args[0], aliases), self.value(node.args[1], aliases)
        for v in (text, other):
            if v.kind is not None and v.kind != STRING:
                return _FALSE
        s, p = text.x, other.x
        if len(node.args) == 3 and isinstance(node.args[2], Const) and node.args[2].value is True:
            s, p = f"lower({s})", f"lower({p})"
        typed = " AND ".join(f"{v.t} = {STRING}" for v in (text, other) if v.kind is None)
        eq = "=" if want else "<>"
        if node.name == "STARTSWITH":
            test = f"substr({s}, 1, length({p})) {eq} {p}"
        elif node.name == "ENDSWITH":
            tail = f"substr({s}, length({s}) - length({p}) + 1)"
            test = (
                f"(length({s}) >= length({p}) AND {tail} = {p})"
                if want
                else f"(length({s}) < length({p}) OR {tail} <> {p})"
            )
        elif node.name == "CONTAINS":
            test = f"{self.dialect.contains(s, p)} {'>' if want else '='} 0"
        elif node.name == "LIKE":
            test = self.dialect.like(s, p, negated=not want)
        else:  # pragma: no cover - the parser knows the same list
            raise ValueError(f"unknown function {node.name}")
        return f"{typed} AND {test}" if typed else test

    # -- values -----------------------------------------------------------------------------

    def value(self, node: Node, aliases: dict[str, str]) -> _Val:
        if isinstance(node, Path):
            a = aliases[node.key]
            return _Val(None, f"{a}.type", f"{a}.text", f"{a}.num")
        if isinstance(node, Const):
            kind, text, num = _scalar(node.value)
            return _Val(
                kind,
                str(kind),
                "NULL" if text is None else self.bind(text),
                "NULL" if num is None else self.bind(num),
            )
        if isinstance(node, Call) and node.name in ("LOWER", "UPPER"):
            inner = self.value(node.args[0], aliases)
            if inner.kind is not None and inner.kind != STRING:
                return _UNDEF
            fn = node.name.lower()
            t = str(STRING) if inner.kind == STRING else f"CASE WHEN {inner.t} = {STRING} THEN {STRING} END"
            return _Val(inner.kind, t, f"{fn}({inner.x})", "NULL")
        raise TypeError(f"not a value: {node!r}")  # pragma: no cover - the parser only lets values here


def _scalar(value: Any) -> tuple[int, str | None, float | None]:
    from datarun.catalog.flatten import scalar_row

    return scalar_row(value)


def _paths(node: Node) -> list[str]:
    """The distinct path keys a leaf reads, in order of appearance."""
    found: dict[str, None] = {}

    def walk(n: Node) -> None:
        if isinstance(n, Path):
            found.setdefault(n.key, None)
        elif isinstance(n, Call):
            for arg in n.args:
                walk(arg)
        elif isinstance(n, Compare | And | Or):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, Not):
            walk(n.operand)

    walk(node)
    return list(found)


def select_sql(
    where: Node | None,
    *,
    dialect: Dialect,
    order_by: Node | None = None,
    descending: bool = True,
    top: int | None = 10,
    include_hidden: bool = False,
) -> tuple[Sql, ...]:
    """The whole query: statements whose results, concatenated, are the matching runs in order,
    at most ``top``. One statement, except when ordering by a plain path (below)."""
    tr = _Translator(dialect)
    conditions = [] if include_hidden else ["r.hidden = 0"]
    if where is not None:
        conditions.append(tr.true(where))
    where_sql = " AND ".join(conditions) or _TRUE
    direction = "DESC" if descending else "ASC"
    newest = "r.start DESC, r.id DESC"  # the tie-break, whatever the direction (as the oracle)
    if isinstance(order_by, Path):
        return _ordered_by_path(tr, order_by.key, where_sql, direction, newest, top)
    join = ""
    order = ""
    nulls = "NULLS LAST" if descending else "NULLS FIRST"  # undefined sorts below every type
    if order_by is not None and _paths(order_by):
        assert is_value(order_by)
        key = _paths(order_by)[0]
        join = f" LEFT JOIN run_params o ON o.rid = r.rid AND o.pid = {tr.pid(key)}"
        v = tr.value(order_by, {key: "o"})
        # Cosmos orders by type first (see oracle.sort_key), then by the value within a type.
        order = "".join(f"{col} {direction} {nulls}, " for col in (v.t, v.n, v.x) if col != "NULL")
    column = "r.rid" if join else "r.doc"
    text = f"SELECT {column} FROM runs r{join} WHERE {where_sql} ORDER BY {order}{newest}"
    if top is not None:
        text += f" LIMIT {tr.bind(int(top))}"
    return (Sql(dialect.render(text), tr.params, rids=bool(join)),)


def _ordered_by_path(
    tr: _Translator, key: str, where_sql: str, direction: str, newest: str, top: int | None
) -> tuple[Sql, ...]:
    """``--order-by run.params.x``: the runs that have the path, walked in the order of the
    (pid, type, num, text) index so that the walk stops after ``top`` matches, and the runs
    that lack it (undefined sorts below every type: last when descending, first ascending).

    One LEFT JOIN sorted on the joined columns would sort every match (100k runs, ~100 ms);
    split, each statement is an index walk that stops at the limit. Within one type only one
    of ``num``/``text`` is ever set, so their NULLs never meet and need no NULLS clause,
    which lets PostgreSQL walk the same index backwards too."""
    pid = tr.pid(key)
    limit = tr.bind(int(top)) if top is not None else None
    tail = "" if limit is None else f" LIMIT {limit}"
    having = (
        f"SELECT o.rid FROM run_params o JOIN runs r ON r.rid = o.rid WHERE o.pid = {pid} AND {where_sql}"
        f" ORDER BY o.type {direction}, o.num {direction}, o.text {direction}, {newest}{tail}"
    )
    lacking = (
        f"SELECT r.rid FROM runs r WHERE {where_sql} AND NOT EXISTS"
        f" (SELECT 1 FROM run_params o WHERE o.rid = r.rid AND o.pid = {pid}) ORDER BY {newest}{tail}"
    )
    name = None if limit is None else limit[1:]
    parts = (having, lacking) if direction == "DESC" else (lacking, having)
    return tuple(Sql(tr.dialect.render(text), tr.params, rids=True, limit=name) for text in parts)
