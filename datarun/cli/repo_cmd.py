"""`datarun repo create|list|get`."""

from __future__ import annotations

import click

from datarun.cli.common import info, json_option, print_json, state, with_store


@click.group()
def repo() -> None:
    """Create and list repos (datasets with one lifecycle)."""


@repo.command("create")
@click.option("--repo", "name", required=True, help="Repo name: lowercase letters, digits, . _ -")
@click.option("--description", default="", help="What the repo holds.")
@with_store
def create(name: str, description: str) -> None:
    """Create a repo."""
    created = state().client().create_repo(name, description)
    info(f"created repo `{created.name}` in {state().client().meta.url}")


@repo.command("list")
@with_store
@json_option
def list_(as_json: bool) -> None:
    """List repos: name , description , created."""
    repos = state().client().list_repos()
    if as_json:
        print_json([r.to_json() for r in repos])
        return
    for r in repos:
        click.echo(f"{r.name} , {r.description} , {r.created}")


@repo.command("get")
@click.option("--repo", "name", required=True)
@with_store
@json_option
def get(name: str, as_json: bool) -> None:
    """Show one repo."""
    r = state().client().get_repo(name)
    if as_json:
        print_json(r.to_json())
    else:
        click.echo(f"{r.name} , {r.description} , {r.created}")
