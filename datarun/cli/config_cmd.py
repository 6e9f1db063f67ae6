"""`datarun config create|show`."""

from __future__ import annotations

import click

from datarun import config as cfg
from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.store import backend_for


@click.group()
def config() -> None:
    """Create or show the configuration (author and store)."""


@config.command("create")
@click.option("--name", default="", help="Author name recorded in bundles.")
@click.option("--email", default="", help="Author email recorded in bundles.")
@click.option("--store", "store_url", default="", metavar="URL", help="Store URL to use by default.")
@click.option("--blob-store", default="", metavar="URL", help="Separate store for chunk data.")
@click.option("--credential", default="", metavar="PATH", help="Credential file for a cloud store (path only).")
def create(name: str, email: str, store_url: str, blob_store: str, credential: str) -> None:
    """Write the config file (DATARUN_CONFIG or ~/.datarun/config.yaml)."""
    from datarun.store import open_store

    for url in (store_url, blob_store):
        if url:
            # Validate the URL and find credentials now rather than at first use; no request is sent.
            open_store(url, credential).close()
    conf = cfg.Config(store=store_url, blob_store=blob_store, name=name, email=email, credential=credential)
    path = cfg.save_config(conf)
    info(f"wrote {path}")


@config.command("show")
@with_store
@json_option
def show(as_json: bool) -> None:
    """Show the config and which store would be used, and why."""
    conf = cfg.load_config()
    choice = cfg.choose_store(state().store, conf)
    data = {
        "config_file": str(cfg.config_path()),
        "name": conf.name,
        "email": conf.email,
        "backend": backend_for(choice.url),
        "store": choice.url,
        "blob_store": choice.blob_url,
        "store_source": choice.source,
        "credential": conf.credential,  # a path; the file's content is never shown
        "cache_dir": str(cfg.cache_dir()),
    }
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")
