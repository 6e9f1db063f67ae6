"""What every page module gets: the client, the templates, paging, and the error pages.

Page modules are thin: they parse the request, call the public ``Client`` API and render a
template. Errors keep the CLI's wording; their exit code picks the HTTP status.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from datarun.errors import DatarunError, ExitCode, UnsafePathError
from datarun.fs.reader import resolve_ref
from datarun.model import Bundle
from datarun.repo import Client
from datarun.web.listing import ListingCache

TEMPLATES = Path(__file__).parent / "templates"

_STATUS = {
    ExitCode.NOT_FOUND: 404,
    ExitCode.USAGE: 400,
    ExitCode.CONFLICT: 409,
    ExitCode.INTEGRITY: 500,
    ExitCode.STORE: 503,
    ExitCode.LOCAL_IO: 500,
}


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class WebContext:
    client: Client
    page_size: int = 200
    title: str = "datarun"
    listings: ListingCache = field(default_factory=ListingCache)
    nav: tuple[tuple[str, str], ...] = ()  # (label, href) of each page family's top-level link

    @functools.cached_property
    def env(self) -> Environment:
        env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
        env.filters["size"] = human_size
        env.filters["urlpath"] = lambda path: quote(str(path), safe="/")
        env.filters["q"] = lambda text: quote(str(text), safe="")
        return env

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(title=self.title, nav=self.nav, **values)
        return HTMLResponse(html, status_code=status)

    def error(self, status: int, message: str) -> HTMLResponse:
        return self.render("error.html", status=status, status_code=status, message=message)

    def bundle(self, repo: str, ref: str) -> Bundle:
        return resolve_ref(self.client, repo, ref)


def status_of(err: DatarunError) -> int:
    if isinstance(err, UnsafePathError):  # an unsafe path in a URL is the caller's, not the store's
        return 400
    return _STATUS.get(err.exit_code, 500)


Endpoint = Callable[[Request], Response]


def page(ctx: WebContext, handler: Callable[[WebContext, Request], Response]) -> Endpoint:
    """A sync endpoint (Starlette runs it on its thread pool) whose expected errors are pages."""

    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        try:
            return handler(ctx, request)
        except DatarunError as err:
            return ctx.error(status_of(err), str(err))

    return endpoint
