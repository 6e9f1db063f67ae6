"""`datarun label set|get|list|history`."""

from __future__ import annotations

import click

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.cli.lineage_cmd import invalid_reasons


@click.group()
def label() -> None:
    """Movable names for bundles, moved with compare-and-swap and kept in a history."""


@label.command("set")
@click.option("--repo", required=True)
@click.option("--label", "name", required=True)
@click.option("--bundle", "bundle_id", required=True)
@click.option(
    "--expect",
    default=None,
    metavar="BUNDLE",
    help="Move only if the label points at BUNDLE now ('' = only if it does not exist).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Retry this many times if another writer moves the label at the same time.",
)
@with_store
@json_option
def set_(repo: str, name: str, bundle_id: str, expect: str | None, retries: int, as_json: bool) -> None:
    """Point a label at a bundle."""
    moved = state().client().set_label(repo, name, bundle_id, expect=expect, retries=retries)
    if as_json:
        print_json(moved.to_json())
    info(f"label `{name}` -> {bundle_id} (move #{moved.seq})")


@label.command("get")
@click.option("--repo", required=True)
@click.option("--label", "name", required=True)
@with_store
@json_option
def get(repo: str, name: str, as_json: bool) -> None:
    """Print the bundle id a label points at."""
    found = state().client().get_label(repo, name)
    if as_json:
        print_json(found.to_json())
    else:
        click.echo(found.bundle)


@label.command("list")
@click.option("--repo", required=True)
@with_store
@json_option
def list_(repo: str, as_json: bool) -> None:
    """List labels: name , bundle , time."""
    labels = state().client().list_labels(repo)
    bad = invalid_reasons([f"bundle/{repo}/{lbl.bundle}" for lbl in labels])
    if as_json:
        print_json([{**lbl.to_json(), "invalid": f"bundle/{repo}/{lbl.bundle}" in bad} for lbl in labels])
        return
    for lbl in labels:
        mark = " , INVALID" if f"bundle/{repo}/{lbl.bundle}" in bad else ""
        click.echo(f"{lbl.name} , {lbl.bundle} , {lbl.time}{mark}")


@label.command("history")
@click.option("--repo", required=True)
@click.option("--label", "name", required=True)
@with_store
@json_option
def history(repo: str, name: str, as_json: bool) -> None:
    """Every move of a label, oldest first: seq , bundle , time , author."""
    moves = state().client().label_history(repo, name)
    if as_json:
        print_json([m.to_json() for m in moves])
        return
    for m in moves:
        click.echo(f"{m.seq} , {m.bundle} , {m.time} , {m.author}")
