"""Runs: a query box in the `run query` language with the params as columns, and a run's page
with its record, its versions and the bundles it read and wrote."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datarun.errors import UsageError
from datarun.web.context import WebContext, page
from datarun.web.graphs import invalid_reasons, synced

NAV = ("Runs", "/runs")
DEFAULT_TOP = 50
MAX_TOP = 1000
MAX_PARAM_COLUMNS = 12  # wider tables stop being readable; the run page has them all


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted columns (``model.lr``); lists stay one cell."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _top(request: Request) -> int:
    raw = request.query_params.get("top", "") or str(DEFAULT_TOP)
    if not raw.isdigit() or not 0 < int(raw) <= MAX_TOP:
        raise UsageError(f"top={raw}: give a number of runs from 1 to {MAX_TOP}")
    return int(raw)


def runs(ctx: WebContext, request: Request) -> Response:
    query = request.query_params.get("q", "").strip()
    hidden = request.query_params.get("hidden", "") == "1"
    values: dict[str, Any] = {"query": query, "hidden": hidden, "rows": [], "columns": [], "error": ""}
    try:
        top = _top(request)
        with synced(ctx.client, whole_graph=False) as (index, graph):
            found = index.query(query or None, top=top, include_hidden=hidden)
            bad = graph.invalid_reasons([f"run/{r['id']}" for r in found])
    except UsageError as err:  # a typo in the query: the page stays, with the message above the box
        values["error"] = str(err)
        return ctx.render("runs.html", status=400, **values)
    rows = [(r, _flat(r.get("params") or {}), f"run/{r['id']}" in bad) for r in found]
    columns = sorted({key for _, flat, _ in rows for key in flat})
    values["more_columns"] = max(0, len(columns) - MAX_PARAM_COLUMNS)
    values["columns"] = columns[:MAX_PARAM_COLUMNS]
    values["rows"] = [
        (r, [_cell(flat[c]) if c in flat else "" for c in values["columns"]], invalid) for r, flat, invalid in rows
    ]
    return ctx.render("runs.html", **values)


def run(ctx: WebContext, request: Request) -> Response:
    run_id = request.path_params["run_id"]
    versions = ctx.client.runs.history(run_id)
    latest = versions[-1]
    reasons = invalid_reasons(ctx.client, f"run/{latest.id}")
    params = sorted((key, _cell(value)) for key, value in _flat(latest.params).items() if key)
    return ctx.render(
        "run.html",
        run=latest,
        versions=list(reversed(versions)),
        params=params,
        reasons=reasons,
        transfers=sorted(latest.transfers.items()),
        record=orjson.dumps(latest.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
    )


def routes(ctx: WebContext) -> list[Route]:
    return [
        Route("/runs", page(ctx, runs), name="runs"),
        Route("/runs/{run_id}", page(ctx, run), name="run"),
    ]
