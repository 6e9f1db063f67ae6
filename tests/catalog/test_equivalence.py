"""SQLite, PostgreSQL and the plain-Python evaluator give identical answers.

The corpus has missing paths, mixed types (a number here, a string or an array there), null,
booleans and arrays; the queries are generated from the whole language, with a fixed seed so
that a failure names a query that can be replayed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from datarun.catalog import Index, open_index, parse, parse_value
from datarun.catalog.oracle import select
from tests.catalog.writer import corpus, run_doc

PATHS = [
    "run.params.description",
    "run.params.lr",
    "run.params.lr[0]",
    "run.params.model",
    "run.params.model.lr",
    "run.params.model.layers",
    "run.params.model.name",
    'run.params["key with-dash"]',
    "run.params.flag",
    "run.params.missing",
    "run.title",
    "run.phase",
    "run.tags",
    "run.tags[0]",
    "run.tags[1]",
    "run.start",
    "run.hidden",
    "run.inputs[0].bundle",
    "run.exit_code",
]
LITERALS = ["0", "1", "0.01", "0.02", "-2", "5", "6", "'sample'", "'Sample'", "'0.1'", "true", "false", "null"]
LITERALS += ["'gpu'", "'2026-01-10'", "''", "'a-b'", "'x%y'", "'Succeeded'", "'b1'", "'alpha'", "1.0"]
PATTERNS = ["'s%'", "'%e'", "'_ample'", "'%-%'", "'x%y'", "'%'", "'%a%-1_'", "''"]
OPS = ["=", "!=", "<>", "<", "<=", ">", ">="]


def _atom(rng: random.Random) -> str:
    p, q, lit = rng.choice(PATHS), rng.choice(PATHS), rng.choice(LITERALS)
    kind = rng.randrange(14)
    if kind == 0:
        return f"{p} {rng.choice(OPS)} {lit}"
    if kind == 1:
        return f"{lit} {rng.choice(OPS)} {p}"
    if kind == 2:
        return f"{p} {rng.choice(OPS)} {q}"
    if kind == 3:
        items = ", ".join(rng.sample(LITERALS, rng.randint(1, 3)))
        return f"{p} {rng.choice(['', 'NOT '])}IN ({items})"
    if kind == 4:
        low, high = sorted(rng.sample(["0", "0.01", "1", "5", "'a'", "'t'", "'2026-01-05'", "'2026-01-20'"], 2))
        return f"{p} {rng.choice(['', 'NOT '])}BETWEEN {low} AND {high}"
    if kind == 5:
        return f"{p} {rng.choice(['', 'NOT '])}LIKE {rng.choice(PATTERNS)}"
    if kind == 6:
        fn = rng.choice(["STARTSWITH", "ENDSWITH", "CONTAINS"])
        arg = rng.choice(["'s'", "'a'", "'-1'", "'7'", "''", "'S'", "'GPU'", "1", q])
        flag = rng.choice(["", ", true", ", false"])
        return f"{fn}({p}, {arg}{flag})"
    if kind == 7:
        return f"{rng.choice(['LOWER', 'UPPER'])}({p}) {rng.choice(OPS)} {rng.choice([*LITERALS, f'LOWER({q})'])}"
    if kind == 8:
        fn = rng.choice(["IS_DEFINED", "IS_NULL", "IS_BOOL", "IS_NUMBER", "IS_STRING", "IS_ARRAY", "IS_OBJECT"])
        return f"{fn}({p})"
    if kind == 9:
        return f"ARRAY_CONTAINS({rng.choice(['run.tags', 'run.params.lr', 'run.params.model', 'run.title'])}, {lit})"
    if kind == 10:
        return p
    if kind == 11:
        return f"{lit} {rng.choice(OPS)} {rng.choice(LITERALS)}"
    if kind == 12:
        return f"IS_DEFINED({lit})"
    return rng.choice(["true", "false", "null", "'x'"])


def _expr(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.35:
        return _atom(rng) if rng.random() < 0.7 else f"NOT {_atom(rng)}"
    shape = rng.randrange(4)
    if shape == 0:
        return f"NOT {_expr(rng, depth - 1)}"
    if shape == 1:
        return f"({_expr(rng, depth - 1)})"
    return f"{_expr(rng, depth - 1)} {rng.choice(['AND', 'OR'])} {_expr(rng, depth - 1)}"


def generated_queries(n: int, seed: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [_expr(rng, 3) for _ in range(n)]


HAND_WRITTEN = [
    "run.params.description = 'sample' AND run.params.model.lr > 0.01",
    "NOT (run.params.lr > 0.01)",  # a string or missing lr is neither > nor NOT >
    "run.params.lr != 1",
    "run.params.lr = '0.1'",  # a string is not the number 0.1
    "run.params.lr = 0.1",
    "run.params.model = null",
    "NOT IS_DEFINED(run.params.model) OR IS_NULL(run.params.model)",
    "ARRAY_CONTAINS(run.tags, 'gpu') AND NOT ARRAY_CONTAINS(run.tags, 'GPU')",
    "run.params['key with-dash'] IN (1, 'two') AND run.phase IN ('Succeeded', 'Cached')",
    "run.start BETWEEN '2026-01-05' AND '2026-01-10'",
    "STARTSWITH(run.title, 'S', true) AND run.title LIKE '%-1_'",
    "run.params.flag",
    "NOT run.params.flag",
    "run.params.flag = true OR run.params.flag = 'true'",
    "run.inputs[0].bundle = 'b3'",
    "run.params.model.layers >= run.params.lr",
    # Each operator's false side, at the boundary where its inverse is easy to get wrong.
    *(f"NOT (run.params.model.layers {op} 3)" for op in OPS),
    *(f"NOT (run.params.description {op} 'sample')" for op in OPS),
    *(f"NOT ({fn}(run.title, 'alpha'))" for fn in ("STARTSWITH", "ENDSWITH", "CONTAINS")),
    "NOT (run.title LIKE 'alpha%')",
    "NOT (run.params.flag = false)",
    "NOT (run.params.model = null)",
]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return corpus(300)


@pytest.fixture
def both(tmp_path: Path, pg_database: str, docs: list[dict[str, Any]]) -> Iterator[tuple[Index, Index]]:
    with open_index(f"sqlite://{tmp_path / 'i.sqlite'}", tmp_path) as lite, open_index(pg_database, tmp_path) as pg:
        assert lite.add(docs) == len(docs) and pg.add(docs) == len(docs)
        yield lite, pg


def _ids(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in rows]


def test_generated_queries_agree_on_sqlite_postgresql_and_the_oracle(
    both: tuple[Index, Index], docs: list[dict[str, Any]]
) -> None:
    lite, pg = both
    matched = 0
    for query in HAND_WRITTEN + generated_queries(600):
        want = _ids(select(docs, parse(query), top=None, include_hidden=True))
        assert _ids(lite.query(query, top=None, include_hidden=True)) == want, f"SQLite differs on: {query}"
        assert _ids(pg.query(query, top=None, include_hidden=True)) == want, f"PostgreSQL differs on: {query}"
        matched += bool(want) and len(want) < len(docs)
    # A generator that only produced all-or-nothing answers would prove little.
    assert matched > 80


@pytest.mark.parametrize(
    "order_by",
    ["run.params.lr", "run.params.model", "run.params.model.layers", "LOWER(run.title)", "run.tags", "run.start"],
)
def test_order_top_and_hidden_agree(both: tuple[Index, Index], docs: list[dict[str, Any]], order_by: str) -> None:
    lite, pg = both
    for descending in (True, False):
        for where, hidden in ((None, False), ("run.phase != 'Failed'", True), ("IS_DEFINED(run.params.lr)", False)):
            tree = parse(where) if where else None
            want = _ids(
                select(docs, tree, order_by=parse_value(order_by), descending=descending, top=7, include_hidden=hidden)
            )
            kwargs: dict[str, Any] = {
                "order_by": order_by,
                "descending": descending,
                "top": 7,
                "include_hidden": hidden,
            }
            assert _ids(lite.query(where, **kwargs)) == want, (where, kwargs)
            assert _ids(pg.query(where, **kwargs)) == want, (where, kwargs)


def test_default_order_is_newest_first_top_10_without_hidden(
    both: tuple[Index, Index], docs: list[dict[str, Any]]
) -> None:
    lite, pg = both
    want = _ids(select(docs, None))
    assert len(want) == 10
    assert _ids(lite.query(None)) == want == _ids(pg.query(None))
    starts = [r["start"] for r in lite.query(None)]
    assert starts == sorted(starts, reverse=True)
    assert not any(r["hidden"] for r in lite.query(None, top=None))
    assert any(r["hidden"] for r in lite.query(None, top=None, include_hidden=True))


@pytest.mark.parametrize(
    "query",
    ["1=1) OR (1=1", "'; DROP TABLE runs; --", "run.title = 'x'; DROP TABLE runs; --", "run.title = '' OR 1=1 --'"],
)
def test_injection_texts_are_refused_and_the_tables_survive(index: Index, query: str) -> None:
    index.add([run_doc("r1", title="'; DROP TABLE runs; --"), run_doc("r2", title="plain")])
    from datarun.catalog import QuerySyntaxError

    with pytest.raises(QuerySyntaxError):
        index.query(query)
    assert index.count() == 2 and _ids(index.query(None)) == ["r2", "r1"]


def test_injection_texts_inside_strings_are_data(index: Index) -> None:
    evil = "'; DROP TABLE runs; --"
    index.add([run_doc("r1", title=evil, params={"1=1) OR (1=1": 1}), run_doc("r2", title="plain")])
    assert _ids(index.query(r"run.title = '\'; DROP TABLE runs; --'")) == ["r1"]
    assert _ids(index.query('run.params["1=1) OR (1=1"] = 1')) == ["r1"]
    assert _ids(index.query("run.title = '1=1) OR (1=1'")) == []
    assert _ids(index.query("CONTAINS(run.title, 'DROP') OR run.title LIKE '%--'")) == ["r1"]
    assert index.count() == 2
