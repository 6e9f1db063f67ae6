"""The lineage picture around a bundle or a run: the SVG of `datarun lineage graph`, with invalid
nodes red and listed with their reasons under it."""

from __future__ import annotations

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datarun.errors import NotFoundError, UsageError
from datarun.lineage import NodeId, bundle_node
from datarun.lineage.picture import bundle_repos, caption, merge, render, with_labels
from datarun.web.context import WebContext, page
from datarun.web.graphs import synced

NAV = ("Lineage", "/lineage")
DEPTH = 20  # a picture deeper than this is unreadable; `datarun lineage graph --depth` draws more


def _start(ctx: WebContext, request: Request) -> NodeId | None:
    params = request.query_params
    if run_id := params.get("run", ""):
        ctx.client.runs.get(run_id)  # a bad or unknown id is the run page's 400 or 404
        return NodeId("run", run_id)
    repo, ref = params.get("repo", ""), params.get("bundle", "")
    if not (repo or ref):
        return None
    if not (repo and ref):
        raise UsageError("give both repo= and bundle= (a bundle id or a label), or run=")
    return bundle_node(repo, ctx.bundle(repo, ref).id)


def _inline(svg: bytes) -> Markup:
    """Graphviz's SVG without its XML prolog, to sit inside the page. Every text in it was
    escaped when the DOT source was written (lineage.picture), so it is markup, not input."""
    text = svg.decode()
    return Markup(text[text.index("<svg") :])  # noqa: S704 - escaped by lineage.picture, see above


def lineage(ctx: WebContext, request: Request) -> Response:
    start = _start(ctx, request)
    if start is None:
        return ctx.render("lineage.html", start=None, picture=None, invalid=[], caption="")
    with synced(ctx.client) as (_, graph):
        if not graph.exists(start):
            raise NotFoundError(f"{start.key} is not in the lineage graph yet")
        walk = merge([graph.walk(start, side, depth=DEPTH) for side in ("ancestors", "descendants")])
    walk = with_labels(walk, (label for repo in bundle_repos(walk) for label in ctx.client.list_labels(repo)))
    invalid = [n for n in walk.nodes if n.invalid]
    return ctx.render(
        "lineage.html", start=start, picture=_inline(render(walk, "svg")), invalid=invalid, caption=caption(walk)
    )


def routes(ctx: WebContext) -> list[Route]:
    return [Route("/lineage", page(ctx, lineage), name="lineage")]
