"""The query language's parser: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import pytest

from datarun.catalog import QuerySyntaxError, parse, parse_value
from datarun.catalog.language import And, Call, Compare, Const, Not, Or, Path
from datarun.errors import ExitCode


def test_nested_paths_brackets_and_keywords_in_any_case() -> None:
    tree = parse("run.params.description = 'sample' and run.params.model.lr > 0.01")
    assert tree == And(
        Compare("=", Path(("params", "description")), Const("sample")),
        Compare(">", Path(("params", "model", "lr")), Const(0.01)),
    )
    assert parse('run.params["key with-dash"] <> 2') == Compare("!=", Path(("params", "key with-dash")), Const(2))
    assert parse('run.tags[1] = "gpu"') == Compare("=", Path(("tags", 1)), Const("gpu"))
    assert Path(("params", "key with-dash", 0, "x")).key == 'params["key with-dash"][0].x'


def test_sugar_becomes_comparisons_and_functions() -> None:
    x = Path(("params", "x"))
    assert parse("run.params.x IN (1, 'a')") == Or(Compare("=", x, Const(1)), Compare("=", x, Const("a")))
    assert parse("run.params.x NOT BETWEEN 1 AND 2") == Not(And(Compare(">=", x, Const(1)), Compare("<=", x, Const(2))))
    assert parse("run.params.x NOT LIKE 'a%'") == Not(Call("LIKE", (x, Const("a%"))))
    assert parse("NOT run.hidden OR false") == Or(Not(Path(("hidden",))), Const(False))


def test_not_binds_tighter_than_and_which_binds_tighter_than_or() -> None:
    a, b, c = (Compare("=", Path((n,)), Const(1)) for n in "abc")
    assert parse("run.a = 1 OR run.b = 1 AND NOT run.c = 1") == Or(a, And(b, Not(c)))
    assert parse("(run.a = 1 OR run.b = 1) AND run.c = 1") == And(Or(a, b), c)


def test_string_escapes_are_cosmos_escapes() -> None:
    assert parse(r"run.title = 'it\'s \u00e9'") == Compare("=", Path(("title",)), Const("it's é"))


@pytest.mark.parametrize(
    ("query", "position", "token"),
    [
        ("1=1) OR (1=1", 4, ")"),
        ("'; DROP TABLE runs; --", 1, "'; DROP TABLE runs; "),
        ("run.params.lr >", 16, "end of query"),
        ("run.params.lr = = 2", 17, "="),
        ("params.lr = 1", 1, "params"),
        ("run.title = 'abc", 13, "'abc"),
        ("run.params.x = 1; DELETE FROM runs", 17, ";"),
        ("FOO(run.title)", 1, "FOO"),
        ("STARTSWITH(run.title)", 1, "STARTSWITH"),
        ("(run.a > 1) = true", 2, "run.a > 1"),
        ("run.a = 1 -- comment", 11, "-"),
    ],
)
def test_bad_queries_name_the_position_and_token_and_exit_2(query: str, position: int, token: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse(query)
    err = caught.value
    assert (err.position + 1, err.token) == (position, token)
    assert f"position {position}" in str(err) and f"`{token}`" in str(err)
    assert err.exit_code == ExitCode.USAGE


def test_empty_query_and_condition_as_order_are_refused() -> None:
    with pytest.raises(QuerySyntaxError, match="empty"):
        parse("   ")
    with pytest.raises(QuerySyntaxError, match="--order-by takes a value"):
        parse_value("run.params.lr > 1")
    assert parse_value("LOWER(run.title)") == Call("LOWER", (Path(("title",)),))


def test_injection_text_inside_a_string_is_just_a_string() -> None:
    tree = parse(r"run.title = '\'; DROP TABLE runs; --' OR run.title = '1=1) OR (1=1'")
    assert tree == Or(
        Compare("=", Path(("title",)), Const("'; DROP TABLE runs; --")),
        Compare("=", Path(("title",)), Const("1=1) OR (1=1")),
    )
