"""`datarun record add`, `datarun lineage ancestors|descendants`, `datarun invalidate|revalidate`.

Each command first brings the lineage tables of the run index up to date with the store, then
answers from the index: the walk is one recursive SQL query, not a crawl over store objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.errors import UsageError
from datarun.layout import LINEAGE_EVENTS_PREFIX
from datarun.store import ObjectStore

F = Callable[..., Any]


def index_option(fn: F) -> F:
    return click.option(
        "--index",
        "index_url",
        metavar="URL",
        help="Run index (where the lineage tables live): sqlite:///path or postgresql://...",
    )(fn)


@contextmanager
def open_graph(index_url: str | None) -> Iterator[Any]:
    """The synced lineage graph of the CLI's store."""
    from datarun.catalog import open_index
    from datarun.lineage import Graph

    client = state().client()
    with open_index(index_url, client.cache_dir) as index:
        graph = Graph(index)
        graph.sync(client.meta)
        yield graph


def who() -> str:
    name, email = state().client().author
    return f"{name} <{email}>" if email else name


def node_selector(fn: F) -> F:
    fn = click.option("--record", "record_id", default=None, help="An external record, by id.")(fn)
    fn = click.option("--run", "run_id", default=None, help="A run, by id.")(fn)
    fn = click.option("--label", default=None, help="A bundle, by label (with --repo).")(fn)
    fn = click.option("--bundle", "bundle_id", default=None, help="A bundle, by id (with --repo).")(fn)
    fn = click.option("--repo", default=None, help="The bundle's repo.")(fn)
    return fn


def selected_node(
    repo: str | None, bundle_id: str | None, label: str | None, run_id: str | None, record_id: str | None
) -> Any:
    from datarun.lineage import NodeId, bundle_node, parse_parent

    given = [x for x in (bundle_id or label, run_id, record_id) if x]
    if len(given) != 1:
        raise UsageError("name one node: --repo R --bundle ID, --repo R --label L, --run ID or --record ID")
    if run_id:
        return parse_parent(f"run:{run_id}")
    if record_id:
        return parse_parent(f"record:{record_id}")
    if not repo:
        raise UsageError("--bundle and --label need --repo")
    if bundle_id and label:
        raise UsageError("name the bundle with exactly one of --bundle or --label")
    if label:
        found = state().client().resolve(repo, None, label)
        return bundle_node(repo, found.id)
    assert bundle_id is not None
    parsed: NodeId = parse_parent(f"{repo}@{bundle_id}")
    return parsed


# -- record ---------------------------------------------------------------------------------


@click.group()
def record() -> None:
    """External records: things outside datarun (a deployed model, a transfer, a figure) in the lineage."""


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not eq or not key:
            raise UsageError(f"--meta `{value}`: write KEY=VALUE")
        out[key] = val
    return out


@record.command("add")
@click.option("--kind", required=True, help="What it is: model, transfer, figure, ...")
@click.option("--uri", required=True, help="Where it is.")
@click.option(
    "--derived-from",
    "parents",
    multiple=True,
    metavar="REPO@BUNDLE|run:ID|record:ID",
    help="A parent (repeat for several).",
)
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for several).")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata (repeat for several).")
@with_store
@json_option
def record_add(
    kind: str, uri: str, parents: tuple[str, ...], tags: tuple[str, ...], meta: tuple[str, ...], as_json: bool
) -> None:
    """Add an external record derived from bundles, runs or other records; prints its id."""
    from datarun.lineage import add_record, parse_parent

    nodes = [parse_parent(p) for p in parents]
    client = state().client()
    for node in nodes:
        if node.type == "bundle":
            client.get_bundle(node.repo, node.id)  # a typo'd parent is refused before anything is written
    doc = add_record(client.meta, kind=kind, uri=uri, derived_from=nodes, tags=tags, meta=_pairs(meta), author=who())
    if as_json:
        print_json(doc)
        return
    click.echo(doc["id"])


# -- lineage --------------------------------------------------------------------------------


@click.group()
def lineage() -> None:
    """The provenance graph: what a bundle, run or record came from, and what came from it."""


def _walk_options(fn: F) -> F:
    fn = node_selector(fn)
    fn = click.option("--depth", type=click.IntRange(min=0), default=50, show_default=True, help="Edges to follow.")(fn)
    fn = click.option(
        "--kind",
        "kinds",
        multiple=True,
        help="Keep only nodes of this type (bundle, run, record) or record kind (repeatable).",
    )(fn)
    fn = click.option(
        "--budget",
        type=click.FloatRange(min=0.001),
        default=5.0,
        show_default=True,
        help="Seconds the query may take; past it the graph is cut (and says so) instead of timing out.",
    )(fn)
    fn = index_option(fn)
    fn = json_option(fn)
    return with_store(fn)


def _reruns_in(walk: Any) -> list[dict[str, Any]]:
    """The operator's reruns of the walk's runs (one list of the store's rerun outcomes)."""
    from datarun.lineage.actions import reruns

    runs = {n.id for n in walk.nodes if n.type == "run"}
    return reruns(state().client(), runs) if runs else []


def _show_walk(walk: Any, as_json: bool, redone: list[dict[str, Any]] | None = None) -> None:
    if as_json:
        print_json(walk.to_json() | ({"reruns": redone} if redone is not None else {}))
        return
    for n in walk.nodes:
        name = f"{n.repo}@{n.id}" if n.type == "bundle" else n.id
        extra = f" , {n.kind}" if n.kind else ""
        bad = " , INVALID: " + "; ".join(n.invalid) if n.invalid else ""
        click.echo(f"{n.depth} , {n.type} , {name}{extra} , {n.title}{bad}")
    for r in redone or ():
        made = f"{r.get('namespace', '')}/{r.get('name', '')}".strip("/") or "-"
        new = f" , run {r['new_run']}" if r.get("new_run") else ""
        click.echo(f"RERUN: {r['run']} -> {made} , {r['outcome']}{new} , {r.get('detail', '')}")
    if walk.cut:
        info(f"cut: the graph is partial ({walk.cut} ran out at depth {walk.depth}); raise --depth or --budget")


def _walk(direction: str, kw: dict[str, Any]) -> None:
    node = selected_node(kw["repo"], kw["bundle_id"], kw["label"], kw["run_id"], kw["record_id"])
    with open_graph(kw["index_url"]) as graph:
        if not graph.exists(node):
            from datarun.errors import NotFoundError

            raise NotFoundError(f"{node} is not in the lineage graph; check the id (and --repo)")
        walk = graph.walk(node, direction, depth=kw["depth"], kinds=kw["kinds"], budget=kw["budget"])
    _show_walk(walk, kw["as_json"], _reruns_in(walk) if direction == "descendants" else None)


@lineage.command("ancestors")
@_walk_options
def ancestors(**kw: Any) -> None:
    """What a node was made from, nearest first: depth , type , name , kind , title."""
    _walk("ancestors", kw)


@lineage.command("descendants")
@_walk_options
def descendants(**kw: Any) -> None:
    """What was made from a node, nearest first: depth , type , name , kind , title."""
    _walk("descendants", kw)


@lineage.command("graph")
@_walk_options
@click.option(
    "--direction",
    type=click.Choice(["ancestors", "descendants", "both"]),
    default="both",
    show_default=True,
    help="Which side of the node to draw.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["dot", "svg", "png", "json", "mermaid"]), default="svg", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="File to write (default: stdout).")
def graph_cmd(direction: str, fmt: str, output: str | None, **kw: Any) -> None:
    """Draw the lineage around a node: repos as clusters, runs as boxes, bundles as ellipses, invalid in red."""
    from pathlib import Path

    from datarun.lineage.picture import bundle_repos, merge, render, with_labels

    node = selected_node(kw["repo"], kw["bundle_id"], kw["label"], kw["run_id"], kw["record_id"])
    sides = ["ancestors", "descendants"] if direction == "both" else [direction]
    with open_graph(kw["index_url"]) as graph:
        if not graph.exists(node):
            from datarun.errors import NotFoundError

            raise NotFoundError(f"{node} is not in the lineage graph; check the id (and --repo)")
        walks = [graph.walk(node, side, depth=kw["depth"], kinds=kw["kinds"], budget=kw["budget"]) for side in sides]
    walk = merge(walks)
    client = state().client()
    walk = with_labels(walk, (label for repo in bundle_repos(walk) for label in client.list_labels(repo)))
    if fmt == "png" and output is None:
        raise UsageError("--format png writes binary: give -o FILE")
    data = render(walk, fmt)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        try:
            Path(output).write_bytes(data)
        except OSError as err:
            from datarun.errors import LocalIOError

            raise LocalIOError(f"cannot write `{output}`: {err.strerror}") from None
        info(f"wrote {output} ({len(walk.nodes)} nodes, {len(walk.edges)} edges)")
    if walk.cut:
        info(f"cut: the graph is partial ({walk.cut} ran out at depth {walk.depth}); raise --depth or --budget")


@lineage.command("export")
@click.option("--format", "fmt", type=click.Choice(["openlineage"]), default="openlineage", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="NDJSON file (default: stdout).")
@click.option("--openlineage-url", "url", default=None, help="POST each event there (e.g. Marquez's /api/v1/lineage).")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Only the newest N runs.")
@index_option
@with_store
def export(fmt: str, output: str | None, url: str | None, top: int | None, index_url: str | None) -> None:
    """Write the runs as OpenLineage RunEvents (START, then COMPLETE or FAIL), one JSON per line."""
    import orjson

    from datarun.errors import LocalIOError, StoreError
    from datarun.lineage.actions import post_json
    from datarun.lineage.openlineage import events

    client = state().client()
    with open_graph(index_url) as graph:
        runs = graph.index.query(None, top=top, include_hidden=True)
        bad = graph.invalid_reasons([f"run/{r['id']}" for r in runs])
    out = []
    for doc in reversed(runs):  # oldest first, as the events happened
        out += list(events({**doc, "invalid": f"run/{doc['id']}" in bad}, client.meta.url))
    text = b"".join(orjson.dumps(e) + b"\n" for e in out)
    if output:
        try:
            Path(output).write_bytes(text)
        except OSError as err:
            raise LocalIOError(f"cannot write `{output}`: {err.strerror}") from None
    elif not url:
        click.echo(text.decode(), nl=False)
    failed = 0
    if url:
        for event in out:
            ok, detail, _ = post_json(url, orjson.dumps(event), retries=3)
            if not ok:
                failed += 1
                info(f"event {event['eventType']} of run {event['run']['facets']['datarun']['runId']}: {detail}")
    info(f"{len(out)} OpenLineage event(s) from {len(runs)} run(s)" + (f", {len(out) - failed} posted" if url else ""))
    if failed:
        raise StoreError(f"{failed} of {len(out)} event(s) could not be posted to {url}")


# -- invalidation ---------------------------------------------------------------------------


def _no_events(meta: ObjectStore) -> bool:
    """True when this store never recorded an invalidation (nor a revalidation): events are
    append-only, so then no bundle can be invalid. One list request, and the mount, download and
    `bundle get` paths skip importing and syncing the lineage index (tens of ms of start-up)."""
    return next(iter(meta.list(LINEAGE_EVENTS_PREFIX)), None) is None


def invalid_reasons(keys: list[str], *, whole_graph: bool = False) -> dict[str, tuple[str, ...]]:
    """Active invalidations reaching each node key (``bundle/<repo>/<id>``), from the synced index."""
    client = state().client()
    if not whole_graph and _no_events(client.meta):
        return {}
    from datarun.catalog import open_index
    from datarun.lineage import Graph

    with open_index(None, client.cache_dir) as index:
        graph = Graph(index)
        if whole_graph:
            graph.sync(client.meta)
        else:
            # Two list requests while nothing was ever invalidated; else the graph too, so a bundle
            # made after a cascade from an invalid one (its run used --allow-invalid) is refused too.
            graph.refresh(client.meta)
        reasons: dict[str, tuple[str, ...]] = graph.invalid_reasons(keys)
        return reasons


def refuse_invalid(repo: str, bundle_id: str, allow_invalid: bool) -> None:
    """Exit with ExitCode.INVALID when the bundle was invalidated, unless --allow-invalid."""
    from datarun.errors import InvalidatedError

    key = f"bundle/{repo}/{bundle_id}"
    reasons = invalid_reasons([key]).get(key, ())
    if not reasons:
        return
    if allow_invalid:
        info(f"warning: bundle {bundle_id} of repo `{repo}` is invalid: {'; '.join(reasons)}")
        return
    raise InvalidatedError(
        f"bundle {bundle_id} of repo `{repo}` is invalid: {'; '.join(reasons)}; pass --allow-invalid to use it anyway, "
        f"or `datarun revalidate` its origin"
    )


allow_invalid_option = click.option(
    "--allow-invalid", is_flag=True, help="Use the bundle even if it was invalidated (a warning is printed)."
)


def neighbours(repo: str, bundle_id: str) -> dict[str, Any]:
    """A bundle's direct parents and children, and why it is invalid, for `bundle get`."""
    from datarun.lineage import bundle_node

    node = bundle_node(repo, bundle_id)
    with open_graph(None) as graph:
        up = graph.walk(node, "ancestors", depth=1)
        down = graph.walk(node, "descendants", depth=1)
        reasons = graph.invalid_reasons([node.key]).get(node.key, ())
    return {
        "parents": [n.to_json() for n in up.nodes if n.depth == 1],
        "children": [n.to_json() for n in down.nodes if n.depth == 1],
        "invalid": bool(reasons),
        "invalid_reasons": list(reasons),
    }


# -- actions --------------------------------------------------------------------------------
