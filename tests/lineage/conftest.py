"""Fixtures of the lineage tests: a small store with bundles, a run and a record, on each index backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datarun.catalog import Index, open_index
from datarun.ids import new_ksuid
from datarun.lineage import Graph, NodeId, add_record, bundle_node
from datarun.model import BundleRef, RunRecord
from datarun.repo import Client
from datarun.store import LocalStore
from tests.catalog.conftest import index_url, pg_database, postgres_url
from tests.catalog.writer import run_doc, write_version

__all__ = ["index_url", "pg_database", "postgres_url"]  # the catalog's backends, registered by import


@dataclass(frozen=True)
class World:
    """raw@a --read--> run --wrote--> feat@f ; feat@f + raw@a2 --derived-from--> models@m --> record x;
    raw@lone touches nothing."""

    client: Client
    a: NodeId
    a2: NodeId
    lone: NodeId
    run: NodeId
    f: NodeId
    m: NodeId
    x: NodeId


def _folder(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "data.txt").write_text(name)
    return path


def build_world(tmp: Path) -> World:
    client = Client(LocalStore(tmp / "store"), cache_dir=tmp / "cache")
    for repo in ("raw", "feat", "models"):
        client.create_repo(repo)
    a = client.upload("raw", _folder(tmp, "a"), "camera day 1", label="latest").bundle
    a2 = client.upload("raw", _folder(tmp, "a2"), "camera day 2").bundle
    lone = client.upload("raw", _folder(tmp, "lone"), "unrelated").bundle
    run_id = new_ksuid()
    f = client.upload(
        "feat", _folder(tmp, "f"), "features", inputs=(BundleRef("raw", a.id),), run=RunRecord(run_id=run_id)
    ).bundle
    write_version(
        client.meta,
        run_doc(
            run_id,
            title="featurize",
            params={"window": 5},
            inputs=[{"name": "in", "repo": "raw", "bundle": a.id}],
            outputs=[{"name": "out", "repo": "feat", "bundle": f.id}],
        ),
    )
    m = client.upload(
        "models", _folder(tmp, "m"), "model v1", inputs=(BundleRef("feat", f.id), BundleRef("raw", a2.id))
    ).bundle
    x = add_record(client.meta, kind="model", uri="fpga://board7/model", derived_from=[bundle_node("models", m.id)])
    return World(
        client,
        bundle_node("raw", a.id),
        bundle_node("raw", a2.id),
        bundle_node("raw", lone.id),
        NodeId("run", run_id),
        bundle_node("feat", f.id),
        bundle_node("models", m.id),
        NodeId("record", str(x["id"])),
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


@pytest.fixture
def index(index_url: str, tmp_path: Path) -> Iterator[Index]:
    with open_index(index_url, tmp_path) as opened:
        yield opened


@pytest.fixture
def graph(index: Index, world: World) -> Graph:
    g = Graph(index)
    g.sync(world.client.meta)
    return g
