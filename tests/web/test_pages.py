"""The web view over plain HTTP: pages, paging, download, errors, read-only."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import types
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import httpx
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from datarun.web.app import PAGES, create_app
from tests.web.conftest import Site


def get(site: Site, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(site.base + path, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def raw_request(site: Site, method: str, path: str) -> tuple[int, bytes]:
    # http.client sends the path exactly as written: no client-side `..` folding.
    conn = http.client.HTTPConnection(urlsplit(site.base).netloc, timeout=30)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_repos_bundles_labels_and_history(site: Site) -> None:
    status, _, body = get(site, "/")
    assert status == 200 and b'href="/repos/cams"' in body and b"camera frames" in body
    status, _, body = get(site, "/repos/cams")
    assert status == 200 and site.first.encode() in body and site.second.encode() in body
    assert b"day one" in body and b"day two" in body
    status, _, body = get(site, "/repos/cams/labels/latest")
    assert status == 200
    history = body.split(b'id="history"')[1]
    assert history.index(site.second.encode()) < history.index(site.first.encode())  # newest move first


def test_file_tree_with_sizes_paged(site: Site) -> None:
    status, _, body = get(site, f"/repos/cams/bundles/{site.first}")
    assert status == 200
    # page_size 3, tree order: images/, images/day1/, images/day1/frame 1.bin
    assert b"images/</a>" in body and b"day1/</a>" in body and b"frame 1.bin" in body and b"5.0 MiB" in body
    assert b"meta.csv" not in body
    status, _, body = get(site, f"/repos/cams/bundles/{site.first}?after=images/day1/frame%201.bin")
    assert status == 200 and b"link" in body and b"notes.txt" in body and b"meta.csv" in body
    status, _, body = get(site, f"/repos/cams/bundles/{site.first}/tree/images/day1")
    assert status == 200 and b"frame 1.bin" in body and b"notes.txt" not in body


def test_download_is_the_file_byte_for_byte(site: Site) -> None:
    status, kind, body = get(site, "/repos/cams/bundles/latest/raw/images/day1/frame%201.bin")
    assert status == 200 and kind == "application/octet-stream"
    assert hashlib.sha256(body).hexdigest() == site.big_sha256


def test_diff_of_two_bundles(site: Site) -> None:
    status, _, body = get(site, f"/repos/cams/diff?old={site.first}&new={site.second}")
    assert status == 200
    # Tree order, 3 per page: added.txt, images/link, images/notes.txt | meta.csv
    assert b'class="added"><td>added</td><td><code>added.txt' in body
    assert b'class="removed"><td>removed</td><td><code>images/link' in body
    assert b'class="removed"><td>removed</td><td><code>images/notes.txt' in body
    assert b"meta.csv" not in body.split(b'id="changes"')[1]
    assert b"after=images%2Fnotes.txt" in body
    status, _, body = get(site, f"/repos/cams/diff?old={site.first}&new={site.second}&after=images/notes.txt")
    assert b'class="modified"><td>modified</td><td><code>meta.csv' in body and b"added.txt" not in body
    assert b'id="next"' not in body


def test_unknown_things_are_404_with_the_cli_message(site: Site) -> None:
    status, _, body = get(site, "/repos/ghosts")
    assert status == 404 and b"repo `ghosts` not found" in body
    status, _, body = get(site, "/repos/cams/bundles/nolabel")
    assert status == 404 and b"label `nolabel` not found" in body
    status, _, body = get(site, "/repos/cams/bundles/latest/raw/missing.txt")
    assert status == 404 and b"file `missing.txt` not found" in body
    assert get(site, "/no/such/page")[0] == 404


def test_path_traversal_is_refused(site: Site) -> None:
    for path in (
        "/repos/cams/bundles/latest/raw/..%2f..%2f..%2fetc%2fpasswd",
        "/repos/cams/bundles/latest/raw/images/../../../etc/passwd",
        "/repos/cams/bundles/latest/tree/images/%2e%2e/%2e%2e",
    ):
        status, body = raw_request(site, "GET", path)
        assert status in (400, 404), path
        assert b"root:" not in body
    status, body = raw_request(site, "GET", "/repos/cams/bundles/latest/raw/..%2f..%2fetc%2fpasswd")
    assert status == 400 and b"is refused" in body


def test_read_only(site: Site) -> None:
    for method in ("POST", "PUT", "DELETE"):
        assert raw_request(site, method, "/repos/cams")[0] == 405


def test_a_page_family_plugs_in_as_one_module(site: Site) -> None:
    # How the runs and lineage pages will arrive: a module with routes() and NAV, added to PAGES.
    extra = types.ModuleType("extra")
    extra.NAV = ("Extra", "/extra")  # type: ignore[attr-defined]
    extra.routes = lambda ctx: [Route("/extra", lambda request: PlainTextResponse("extra page"))]  # type: ignore[attr-defined]
    app = create_app(site.client, pages=(*PAGES, extra))

    async def both() -> tuple[str, str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web") as client:
            return (await client.get("/extra")).text, (await client.get("/")).text

    page, home = asyncio.run(both())
    assert page == "extra page"
    assert 'href="/extra">Extra</a>' in home and 'href="/">Repos</a>' in home
