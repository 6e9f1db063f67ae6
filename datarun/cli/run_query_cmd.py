"""``datarun run query`` and ``datarun run list``: find runs through the index.

Each call first brings the index up to date with the store's change feed (one list request
when nothing is new), then answers from the index alone. The query language is exekias's
Cosmos DB SQL scalar expressions over ``run.*``; see ``datarun.catalog.language``.
"""

from __future__ import annotations

from typing import Any

import click
import orjson

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.errors import UsageError

_QUERY_HELP = """Find runs whose record matches EXPR, newest first.

EXPR is a Cosmos DB SQL scalar expression over `run`, as in exekias:

\b
  run.params.description = 'sample' AND run.params.model.lr > 0.01
  run.params["key with-dash"] IN (1, 2) OR NOT IS_DEFINED(run.params.seed)
  STARTSWITH(run.title, 'bert') AND ARRAY_CONTAINS(run.tags, 'gpu')
  run.start BETWEEN '2026-01-01' AND '2026-02-01' AND run.phase != 'Failed'

Operators: = != <> < <= > >=, AND, OR, NOT, IN (...), BETWEEN, LIKE ('%' and '_').
Functions: STARTSWITH, ENDSWITH, CONTAINS (a third argument true ignores case), LOWER, UPPER,
IS_DEFINED, IS_NULL, IS_BOOL, IS_NUMBER, IS_STRING, IS_ARRAY, IS_OBJECT, ARRAY_CONTAINS.
A comparison between different types, or with a missing path, is not true.
"""


def _order(text: str | None) -> tuple[str | None, bool]:
    """``--order-by "run.params.lr DESC"`` -> (expression, descending). ASC is the default, as in SQL."""
    if text is None:
        return None, True
    words = text.rsplit(None, 1)
    if len(words) == 2 and words[1].upper() in ("ASC", "DESC"):
        return words[0], words[1].upper() == "DESC"
    if not text.strip():
        raise UsageError("--order-by needs an expression such as `run.params.lr DESC`")
    return text, False


def _options(fn: Any) -> Any:
    fn = click.option(
        "--index",
        "index_url",
        metavar="URL",
        help="Run index: sqlite:///path or postgresql://... Overrides DATARUN_INDEX and the config file's `index`.",
    )(fn)
    fn = json_option(fn)
    fn = click.option("--hidden", is_flag=True, help="Include hidden runs.")(fn)
    fn = click.option(
        "--top", type=click.IntRange(min=0), default=10, show_default=True, help="At most this many runs."
    )(fn)
    fn = click.option("--order-by", metavar="EXPR [DESC]", help="Sort by a value, e.g. `run.params.lr DESC`.")(fn)
    return with_store(fn)


def _run(where: str | None, order_by: str | None, top: int, hidden: bool, as_json: bool, index_url: str | None) -> None:
    from datarun.catalog import open_index, parse, parse_value

    expression, descending = _order(order_by)
    # Parse before touching the store: a typo costs nothing and names its position.
    if where is not None:
        parse(where)
    if expression is not None:
        parse_value(expression)
    client = state().client()
    with open_index(index_url, client.cache_dir) as index:
        stats = index.sync(client.meta)
        if stats.applied:
            info(f"index: {stats.applied} new run version(s) from the store ({stats.seconds:.2f} s)")
        runs = _with_lineage(
            index, client.meta, stats.applied > 0 or stats.rebuilt, where, expression, descending, top, hidden
        )
    if as_json:
        print_json(runs)
        return
    if not runs:
        info("no runs match")
        return
    for run in runs:
        params = orjson.dumps(run.get("params", {})).decode()
        if len(params) > 60:
            params = params[:57] + "..."
        flag = " (hidden)" if run.get("hidden") else ""
        flag += " (INVALID)" if run.get("invalid") else ""
        click.echo(
            f"{run.get('id', '')}  {run.get('start', '')}  {run.get('phase', ''):<9}  {run.get('title', '')}{flag}  "
            f"{params}"
        )


@click.command("query", help=_QUERY_HELP)
@click.argument("expr")
@_options
def query(expr: str, order_by: str | None, top: int, hidden: bool, as_json: bool, index_url: str | None) -> None:
    _run(expr, order_by, top, hidden, as_json, index_url)


@click.command("list")
@_options
def list_runs(order_by: str | None, top: int, hidden: bool, as_json: bool, index_url: str | None) -> None:
    """List runs, newest first (``run query`` without a filter)."""
    _run(None, order_by, top, hidden, as_json, index_url)


@click.command("compact")
@click.option(
    "--index",
    "index_url",
    metavar="URL",
    help="Run index: sqlite:///path or postgresql://... Overrides DATARUN_INDEX and the config file's `index`.",
)
@with_store
def compact(index_url: str | None) -> None:
    """Write a snapshot of the store's runs (runs/snapshots/), so that a new index reads one
    object instead of one per change. Deletes nothing; safe while others write runs."""
    from datarun.catalog import open_index

    client = state().client()
    with open_index(index_url, client.cache_dir) as index:
        key = index.compact(client.meta)
        info(f"wrote {key} ({index.count()} runs)")


def _with_lineage(
    index: Any, meta: Any, applied: bool, where: str | None, order: str | None, desc: bool, top: int, hidden: bool
) -> list[dict[str, Any]]:
    """The query with ``run.invalid`` (datarun.lineage) kept current in the index and in each document."""
    from datarun.lineage import Graph

    graph = Graph(index)
    seen = graph.sync(meta, invalidations_only=True)
    graph.flag_runs(full=applied or seen.fetched > 0)
    runs = index.query(where, order_by=order, descending=desc, top=top, include_hidden=hidden)
    bad = graph.invalid_reasons([f"run/{r['id']}" for r in runs])
    return [{**r, "invalid": f"run/{r['id']}" in bad} for r in runs]
