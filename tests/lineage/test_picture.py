"""Lineage pictures: DOT rendered by the real Graphviz `dot`, checked node by node in the SVG; Mermaid; no `dot`."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from datarun.catalog import open_index
from datarun.errors import UsageError
from datarun.lineage import Graph, invalidate
from datarun.lineage.picture import merge, render, to_mermaid
from tests.lineage.conftest import World

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def sqlite_graph(world: World, tmp_path: Path) -> Graph:
    index = open_index(f"sqlite://{tmp_path / 'pic.sqlite'}", tmp_path)
    graph = Graph(index)
    graph.sync(world.client.meta)
    return graph


def _need_dot() -> None:
    if shutil.which("dot") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Graphviz `dot` is missing; CI installs Debian's graphviz (./dev APT_PACKAGES)", pytrace=False)
        pytest.skip("Graphviz `dot` is not installed: apt-get install graphviz")


def _groups(svg: bytes, cls: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == cls:
            title = g.find(f"{SVG}title")
            assert title is not None and title.text is not None
            out[title.text] = g
    return out


def test_svg_has_every_node_edge_and_repo_cluster(sqlite_graph: Graph, world: World) -> None:
    _need_dot()
    invalidate(world.client.meta, sqlite_graph, world.f, reason="bad", who="t")
    walk = merge([sqlite_graph.walk(world.f, "ancestors"), sqlite_graph.walk(world.f, "descendants")])
    svg = render(walk, "svg")
    nodes = _groups(svg, "node")
    assert set(nodes) == {world.a.key, world.run.key, world.f.key, world.m.key, world.x.key}
    edges = set(_groups(svg, "edge"))
    assert edges == {
        f"{world.a.key}->{world.run.key}",
        f"{world.run.key}->{world.f.key}",
        f"{world.f.key}->{world.m.key}",
        f"{world.m.key}->{world.x.key}",
    }
    assert set(_groups(svg, "cluster")) == {"cluster_raw", "cluster_feat", "cluster_models"}
    # Runs are boxes (a polygon), bundles ellipses; the invalid ones are red and struck through.
    assert nodes[world.run.key].find(f"{SVG}polygon") is not None
    assert nodes[world.a.key].find(f"{SVG}ellipse") is not None
    bad = nodes[world.m.key].find(f"{SVG}ellipse")
    assert bad is not None and bad.get("stroke") == "#c62828"
    ok = nodes[world.a.key].find(f"{SVG}ellipse")
    assert ok is not None and ok.get("stroke") != "#c62828"
    struck = [t for t in nodes[world.m.key].iter(f"{SVG}text") if "line-through" in (t.get("text-decoration") or "")]
    assert struck, "invalid nodes are struck through"
    run_text = " ".join(t.text or "" for t in nodes[world.run.key].iter(f"{SVG}text"))
    assert "featurize" in run_text and "window=5" in run_text


def test_cut_graphs_say_so(sqlite_graph: Graph, world: World) -> None:
    _need_dot()
    walk = sqlite_graph.walk(world.x, "ancestors", depth=1)
    svg = render(walk, "svg").decode()
    assert "CUT: partial graph" in svg
    assert "CUT: partial graph" in to_mermaid(walk)


def test_png_is_a_png(sqlite_graph: Graph, world: World) -> None:
    _need_dot()
    assert render(sqlite_graph.walk(world.x, "ancestors"), "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_without_dot_text_formats_work_and_images_say_what_to_install(
    sqlite_graph: Graph, world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    walk = sqlite_graph.walk(world.x, "ancestors")
    assert world.m.key in render(walk, "dot").decode()
    mermaid = render(walk, "mermaid").decode()
    assert mermaid.startswith("flowchart LR") and mermaid.count("-->") == len(walk.edges)
    assert b'"nodes"' in render(walk, "json")
    for fmt in ("svg", "png"):
        with pytest.raises(UsageError, match="apt-get install graphviz"):
            render(walk, fmt)
