"""The diff of two bundles of a repo, paged, with a form to pick them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datarun.web.context import WebContext, page
from datarun.web.listing import take_after


def diff(ctx: WebContext, request: Request) -> Response:
    repo = request.path_params["repo"]
    bundles = sorted(ctx.client.list_bundles(repo), key=lambda b: b.id, reverse=True)
    labels = sorted(ctx.client.list_labels(repo), key=lambda label: label.name)
    old_ref = request.query_params.get("old", "")
    new_ref = request.query_params.get("new", "")
    values: dict[str, Any] = {"repo": repo, "bundles": bundles, "labels": labels, "old_ref": old_ref}
    values["new_ref"] = new_ref
    if not (old_ref and new_ref):
        return ctx.render("diff.html", entries=None, **values)
    old, new = ctx.bundle(repo, old_ref), ctx.bundle(repo, new_ref)
    entries, next_after = take_after(
        ctx.client.diff(old, new), lambda e: e.path, request.query_params.get("after", ""), ctx.page_size
    )
    return ctx.render("diff.html", entries=entries, old=old, new=new, next_after=next_after, **values)


def routes(ctx: WebContext) -> list[Route]:
    return [Route("/repos/{repo}/diff", page(ctx, diff), name="diff")]
