"""`datarun invalidate|revalidate` and `datarun action add|list`: marking nodes invalid, undoing it,
and what runs when a cascade reaches a repo or a record (FORMAT.md §14)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.cli.lineage_cmd import index_option, node_selector, open_graph, selected_node, who

F = Callable[..., Any]


def _node_options(fn: F) -> F:
    fn = node_selector(fn)
    fn = click.option("--reason", required=True, help="Why; recorded with who and when.")(fn)
    fn = index_option(fn)
    fn = json_option(fn)
    return with_store(fn)


@click.command("invalidate")
@_node_options
@click.option("--dry-run", is_flag=True, help="List what would be marked invalid; write nothing.")
def invalidate_cmd(
    repo: str | None,
    bundle_id: str | None,
    label: str | None,
    run_id: str | None,
    record_id: str | None,
    reason: str,
    index_url: str | None,
    as_json: bool,
    dry_run: bool,
) -> None:
    """Mark a node invalid, and every node derived from it; finishes interrupted cascades first."""
    from datarun.lineage import invalidate

    node = selected_node(repo, bundle_id, label, run_id, record_id)
    with open_graph(index_url) as graph:
        client = state().client()
        done = invalidate(client.meta, graph, node, reason=reason, who=who(), dry_run=dry_run, client=client)
    if as_json:
        print_json(
            {
                "event": done.event,
                "dry_run": done.dry_run,
                "nodes": done.nodes,
                "written": done.written,
                "resumed": list(done.resumed),
                "actions": [
                    {"action": o.action, "ok": o.ok, "detail": o.detail, "attempts": o.attempts} for o in done.actions
                ],
            }
        )
        return
    for key in done.nodes:
        click.echo(key)
    for o in done.actions:
        info(f"action {o.action}: {'ok' if o.ok else 'FAILED'} ({o.detail})")
    for event in done.resumed:
        info(f"finished the interrupted cascade {event}")
    verb = "would mark" if dry_run else "marked"
    info(f"{verb} {len(done.nodes)} node(s) invalid")


@click.command("revalidate")
@_node_options
def revalidate_cmd(
    repo: str | None,
    bundle_id: str | None,
    label: str | None,
    run_id: str | None,
    record_id: str | None,
    reason: str,
    index_url: str | None,
    as_json: bool,
) -> None:
    """Undo the invalidations whose origin is this node (recorded too; nothing is deleted)."""
    from datarun.lineage import revalidate

    node = selected_node(repo, bundle_id, label, run_id, record_id)
    with open_graph(index_url) as graph:
        events = revalidate(state().client().meta, graph, node, reason=reason, who=who())
    if as_json:
        print_json(events)
        return
    for event in events:
        click.echo(f"{event['id']} undoes {event['target']}")


# -- what other commands show ---------------------------------------------------------------


@click.group()
def action() -> None:
    """Invalidation actions: what runs when an invalidation reaches a repo or a record."""


@action.command("add")
@click.option("--on", "on", required=True, metavar="repo=NAME|record=ID", help="What the action watches.")
@click.option(
    "--do",
    "do",
    required=True,
    type=click.Choice(["move-label", "webhook", "rerun"]),
    help="What it does (rerun: the operator re-creates the DataRuns that made the reached nodes).",
)
@click.option("--label", default=None, help="move-label: only this label (default: every label of the repo).")
@click.option("--url", default=None, help="webhook: where to POST the JSON document.")
@click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True, help="webhook: retries.")
@with_store
@json_option
def action_add(on: str, do: str, label: str | None, url: str | None, retries: int, as_json: bool) -> None:
    """Attach an action; prints its id."""
    from datarun.lineage.actions import add_action

    doc = add_action(state().client(), on=on, do=do, label=label, url=url, retries=retries, author=who())
    if as_json:
        print_json(doc)
        return
    click.echo(doc["id"])


@action.command("list")
@with_store
@json_option
def action_list(as_json: bool) -> None:
    """List actions: id , on , do , target."""
    from datarun.lineage.actions import list_actions

    found = list_actions(state().client())
    if as_json:
        print_json(found)
        return
    for a in found:
        on = ",".join(f"{k}={v}" for k, v in a["on"].items())
        click.echo(f"{a['id']} , {on} , {a['do']} , {a.get('url') or a.get('label') or ''}")
