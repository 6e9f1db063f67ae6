"""A bundle: its record, its file tree with sizes (paged), and file download."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from datarun.errors import NotFoundError, UnsafePathError, UsageError
from datarun.fs.reader import BundleReader
from datarun.model import FILE, validate_relpath
from datarun.web.context import WebContext, page
from datarun.web.graphs import invalid_reasons
from datarun.web.listing import tree_page

_PIECE = 1 << 20


def _folder(request: Request) -> str:
    path = str(request.path_params.get("path", "")).strip("/")
    if not path:
        return ""
    try:
        return validate_relpath(path)
    except UnsafePathError:
        raise UsageError(
            f"path `{path}` is refused: a path in a bundle has no `..`, `.` or empty parts, and cannot leave it"
        ) from None


def bundle(ctx: WebContext, request: Request) -> Response:
    repo, ref = request.path_params["repo"], request.path_params["ref"]
    folder = _folder(request)
    found = ctx.bundle(repo, ref)
    after = request.query_params.get("after", "")
    listing = None
    if folder or after:  # past the first page: worth indexing the bundle once
        cached = ctx.listings.get(found.manifest, found.file_count, lambda: ctx.client.list_records(found))
        listing = cached.page(folder, after, ctx.page_size) if cached is not None else None
    if listing is None:
        listing = tree_page(ctx.client.list_records(found), folder, after, ctx.page_size)
    if not listing.found:
        raise NotFoundError(f"folder `{folder}` not found in bundle `{found.id}` of repo `{repo}`")
    labels = [label.name for label in ctx.client.list_labels(repo) if label.bundle == found.id]
    reasons = invalid_reasons(ctx.client, f"bundle/{repo}/{found.id}")
    crumbs = []
    if folder:
        parts = folder.split("/")
        crumbs = [("/".join(parts[: i + 1]), part) for i, part in enumerate(parts)]
    return ctx.render(
        "bundle.html",
        repo=repo,
        ref=ref,
        bundle=found,
        folder=folder,
        page=listing,
        labels=labels,
        crumbs=crumbs,
        reasons=reasons,
    )


def download(ctx: WebContext, request: Request) -> Response:
    repo, ref = request.path_params["repo"], request.path_params["ref"]
    path = _folder(request)
    found = ctx.bundle(repo, ref)
    entry = ctx.client.find_file(found, path)
    if entry.kind != FILE:
        raise NotFoundError(f"`{path}` in bundle `{found.id}` is a {entry.kind}, not a file to download")
    reader = BundleReader(ctx.client, entry, name=path)
    first = reader.read(_PIECE)  # before the headers: a missing pack is an error page, not a cut-off file

    def pieces() -> Iterator[bytes]:
        # Every chunk is hash-checked before it is sent; a bad one ends the response short of its
        # Content-Length, so a client never takes a damaged file for a whole one.
        try:
            yield first
            while piece := reader.read(_PIECE):
                yield piece
        finally:
            reader.close()

    name = path.rsplit("/", 1)[-1]
    headers = {
        "Content-Length": str(entry.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff",  # bundle bytes are never rendered as a page of this site
    }
    return StreamingResponse(pieces(), media_type="application/octet-stream", headers=headers)


def routes(ctx: WebContext) -> list[Route]:
    return [
        Route("/repos/{repo}/bundles/{ref}", page(ctx, bundle), name="bundle"),
        Route("/repos/{repo}/bundles/{ref}/tree/{path:path}", page(ctx, bundle), name="tree"),
        Route("/repos/{repo}/bundles/{ref}/raw/{path:path}", page(ctx, download), name="raw"),
    ]
