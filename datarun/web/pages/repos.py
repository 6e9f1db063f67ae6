"""Repos, a repo's bundles and labels, and a label's history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datarun.web.context import WebContext, page

NAV = ("Repos", "/")


def index(ctx: WebContext, request: Request) -> Response:
    repos = sorted(ctx.client.list_repos(), key=lambda r: r.name)
    return ctx.render("repos.html", repos=repos)


def repo(ctx: WebContext, request: Request) -> Response:
    name = request.path_params["repo"]
    info = ctx.client.get_repo(name)
    # Bundle ids sort by time: newest first reads like a log.
    bundles = sorted(ctx.client.list_bundles(name), key=lambda b: b.id, reverse=True)
    labels = sorted(ctx.client.list_labels(name), key=lambda label: label.name)
    by_bundle: dict[str, list[str]] = {}
    for label in labels:
        by_bundle.setdefault(label.bundle, []).append(label.name)
    return ctx.render("repo.html", repo=info, bundles=bundles, labels=labels, by_bundle=by_bundle)


def label(ctx: WebContext, request: Request) -> Response:
    name, label_name = request.path_params["repo"], request.path_params["label"]
    current = ctx.client.get_label(name, label_name)
    history = sorted(ctx.client.label_history(name, label_name), key=lambda h: h.seq, reverse=True)
    return ctx.render("label.html", repo=name, label=current, history=history)


def routes(ctx: WebContext) -> list[Route]:
    return [
        Route("/", page(ctx, index), name="repos"),
        Route("/repos/{repo}", page(ctx, repo), name="repo"),
        Route("/repos/{repo}/labels/{label}", page(ctx, label), name="label"),
    ]
