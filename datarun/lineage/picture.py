"""Pictures of a lineage walk: Graphviz DOT (written with PyPI ``graphviz``, rendered by ``dot``),
Mermaid text and JSON. Builders are pure: a walk in, text or bytes out.

Repos are clusters; runs are boxes with their title and a few params; bundles are ellipses with
their labels; external records are notes. Invalid nodes are red and struck through. A cut walk
says so in the picture's caption.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from datarun.errors import UsageError
from datarun.lineage.rows import Node, Walk
from datarun.model import Label

FORMATS = ("dot", "svg", "png", "json", "mermaid")
_KEY_PARAMS = 4  # params shown in a run's box; the rest are in --json
_RED = "#c62828"


def _params(node: Node) -> str:
    shown = []
    for key, value in sorted(node.params.items()):
        if isinstance(value, dict | list):
            continue
        shown.append(f"{key}={value}")
        if len(shown) == _KEY_PARAMS:
            break
    return ", ".join(shown)


def lines(node: Node) -> list[str]:
    """The text of a node, line by line (shared by DOT and Mermaid)."""
    if node.type == "run":
        out = [node.title or "run", f"run {node.id[:10]}"]
        if node.kind:
            out[1] += f" ({node.kind})"
        if p := _params(node):
            out.append(p)
    elif node.type == "bundle":
        out = [node.id[:10], node.title] if node.title else [node.id[:10]]
        if node.labels:
            out.append("labels: " + ", ".join(node.labels))
    else:
        out = [node.kind or "record", node.title]
    if node.invalid:
        out.append("INVALID")
    return [line for line in out if line]


def caption(walk: Walk) -> str:
    text = f"{walk.direction} of {walk.start}"
    if walk.cut:
        text += f" - CUT: partial graph, the {walk.cut} limit stopped it at depth {walk.depth}"
    return text


def _html_label(node: Node) -> str:
    body = "<BR/>".join(html.escape(line) for line in lines(node))
    if node.invalid:
        body = f'<S><FONT COLOR="{_RED}">{body}</FONT></S>'
    return f"<{body}>"


def to_dot(walk: Walk) -> str:
    try:
        import graphviz
    except ImportError:
        raise UsageError("drawing lineage needs the `graph` extra: pip install 'datarun[graph]'") from None
    dot = graphviz.Digraph("lineage", graph_attr={"rankdir": "LR", "label": caption(walk), "labelloc": "t"})
    by_repo: dict[str, list[Node]] = {}
    for node in walk.nodes:
        by_repo.setdefault(node.repo if node.type == "bundle" else "", []).append(node)

    def add(target: Any, node: Node) -> None:
        shape = {"run": "box", "bundle": "ellipse"}.get(node.type, "note")
        attrs = {"shape": shape, "id": node.node}
        if node.invalid:
            attrs |= {"color": _RED, "penwidth": "2"}
        if node.node == walk.start:
            attrs["style"] = "bold"
        target.node(node.node, label=_html_label(node), **attrs)

    for repo, members in sorted(by_repo.items()):
        if not repo:
            for node in members:
                add(dot, node)
            continue
        with dot.subgraph(name=f"cluster_{repo}") as cluster:
            cluster.attr(label=f"repo {repo}", style="rounded", color="#607d8b")
            for node in members:
                add(cluster, node)
    for edge in walk.edges:
        dot.edge(edge.src, edge.dst, label=edge.rel, fontsize="9")
    source: str = dot.source
    return source


def to_mermaid(walk: Walk) -> str:
    names = {n.node: f"n{i}" for i, n in enumerate(walk.nodes)}
    out = ["flowchart LR", f"  %% {caption(walk)}"]

    def text(node: Node) -> str:
        return "<br/>".join(line.replace('"', "#quot;") for line in lines(node))

    def shape(node: Node) -> str:
        t = text(node)
        if node.type == "run":
            return f'{names[node.node]}["{t}"]'
        if node.type == "bundle":
            return f'{names[node.node]}(["{t}"])'
        return f'{names[node.node]}[/"{t}"/]'

    by_repo: dict[str, list[Node]] = {}
    for node in walk.nodes:
        by_repo.setdefault(node.repo if node.type == "bundle" else "", []).append(node)
    for repo, members in sorted(by_repo.items()):
        if repo:
            out.append(f'  subgraph repo_{repo.replace(".", "_").replace("-", "_")}["repo {repo}"]')
        out += [f"  {'  ' if repo else ''}{shape(n)}" for n in members]
        if repo:
            out.append("  end")
    out += [f"  {names[e.src]} -->|{e.rel}| {names[e.dst]}" for e in walk.edges]
    bad = [names[n.node] for n in walk.nodes if n.invalid]
    if bad:
        out.append(f"  classDef invalid fill:#ffebee,stroke:{_RED},color:{_RED},text-decoration:line-through")
        out.append(f"  class {','.join(bad)} invalid")
    if walk.cut:
        out.append(f'  cut{{{{"{caption(walk)}"}}}}')
    return "\n".join(out) + "\n"


def render(walk: Walk, fmt: str) -> bytes:
    """The picture of ``walk`` in ``fmt`` (one of FORMATS)."""
    if fmt == "json":
        return orjson.dumps(walk.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "mermaid":
        return to_mermaid(walk).encode()
    source = to_dot(walk)
    if fmt == "dot":
        return source.encode()
    if fmt not in ("svg", "png"):
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    import graphviz

    try:
        rendered: bytes = graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise UsageError(
            f"--format {fmt} needs Graphviz's `dot` program: apt-get install graphviz (or brew install graphviz); "
            "--format dot, json and mermaid work without it"
        ) from None
    return rendered


def bundle_repos(walk: Walk) -> list[str]:
    """The repos of the walk's bundles: whose labels :func:`with_labels` wants."""
    return sorted({n.repo for n in walk.nodes if n.type == "bundle"})


def with_labels(walk: Walk, labels: Iterable[Label]) -> Walk:
    """The walk with each bundle's labels (from ``labels``, any repos) shown on its node."""
    names: dict[str, list[str]] = {}
    for label in labels:
        names.setdefault(f"bundle/{label.repo}/{label.bundle}", []).append(label.name)
    nodes = tuple(replace(n, labels=tuple(sorted(names.get(n.node, [])))) for n in walk.nodes)
    return replace(walk, nodes=nodes)


def merge(walks: Sequence[Walk]) -> Walk:
    """One picture of several walks from the same start (ancestors and descendants together)."""
    nodes: dict[str, Node] = {}
    edges = {}
    for w in walks:
        for n in w.nodes:
            nodes.setdefault(n.node, n)
        for e in w.edges:
            edges[(e.src, e.dst, e.rel)] = e
    cut = next((w.cut for w in walks if w.cut), None)
    first = walks[0]
    return Walk(
        first.start,
        " and ".join(w.direction for w in walks),
        tuple(nodes.values()),
        tuple(edges.values()),
        cut,
        min(w.depth for w in walks),
        sum(w.seconds for w in walks),
    )
