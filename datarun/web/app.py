"""The read-only web view: a Starlette app assembled from page modules.

Each module in ``PAGES`` exposes ``routes(ctx) -> list[Route]`` and may name a top-level
link as ``NAV = ("Runs", "/runs")``; a new page is one more module in that tuple, with its
templates beside the others. Only GET and HEAD are routed, so nothing here can change a store;
Starlette answers anything else with 405.
"""

from __future__ import annotations

from types import ModuleType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from datarun.repo import Client
from datarun.web.context import WebContext
from datarun.web.pages import bundles, diff, lineage, repos, runs

PAGES: tuple[ModuleType, ...] = (repos, bundles, diff, runs, lineage)


def create_app(client: Client, *, page_size: int = 200, pages: tuple[ModuleType, ...] = PAGES) -> Starlette:
    nav = tuple(module.NAV for module in pages if hasattr(module, "NAV"))
    ctx = WebContext(client, page_size=page_size, nav=nav)
    routes: list[BaseRoute] = []
    for module in pages:
        routes.extend(module.routes(ctx))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return ctx.error(status, f"{request.url.path}: {detail}")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
