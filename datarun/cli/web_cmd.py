"""`datarun web`: the read-only web view of the store, on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress

import click

from datarun.cli.common import info, state, with_store
from datarun.errors import UsageError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("web")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The view has no login of its own: bind elsewhere only behind one.",
)
@click.option("--page-size", type=click.IntRange(10, 10_000), default=200, show_default=True, help="Rows per page.")
@with_store
def web(port: int, bind: str, page_size: int) -> None:
    """Serve a read-only web view: repos, bundles, labels and history, file trees, downloads, diffs."""
    try:
        import uvicorn

        from datarun.web.app import create_app
    except ImportError as err:
        raise UsageError(
            f"`datarun web` needs the web extra ({err.name} is missing): pip install 'datarun[web]'"
        ) from None
    client = state().client()
    client.list_repos()  # fail now, with the CLI's message, if the store cannot be read
    if not _loopback(bind):
        info(f"warning: serving on {bind}, not loopback: anyone who can reach it can read every bundle")
    info(f"datarun web: http://{bind}:{port}/ (read-only; Ctrl-C to stop)")
    uvicorn.run(create_app(client, page_size=page_size), host=bind, port=port, log_level="warning")
