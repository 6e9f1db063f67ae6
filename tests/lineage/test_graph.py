"""The lineage graph synced from a real local store into SQLite and PostgreSQL, and walked by recursive SQL."""

from __future__ import annotations

from datarun.catalog import Index
from datarun.ids import new_ksuid
from datarun.layout import bundle_key, bundles_prefix
from datarun.lineage import Graph, NodeId, bundle_node
from datarun.listing import BundleListing
from datarun.model import BundleRef
from datarun.records import dumps
from datarun.store import ObjectInfo
from datarun.store.base import ObjectStore
from tests.lineage.conftest import World
from tests.store.counting import CountingStore


def _keys(walk: object) -> set[str]:
    return {n.node for n in walk.nodes}  # type: ignore[attr-defined]


def test_what_data_trained_this_model(graph: Graph, world: World) -> None:
    walk = graph.walk(world.x, "ancestors", kinds=("bundle",))
    assert _keys(walk) == {world.x.key, world.m.key, world.f.key, world.a.key, world.a2.key}
    assert walk.cut is None
    everything = graph.walk(world.x, "ancestors")
    depth = {n.node: n.depth for n in everything.nodes}
    assert depth == {world.x.key: 0, world.m.key: 1, world.f.key: 2, world.a2.key: 2, world.run.key: 3, world.a.key: 4}
    edges = {(e.src, e.dst, e.rel) for e in everything.edges}
    assert (world.a.key, world.run.key, "read") in edges
    assert (world.run.key, world.f.key, "wrote") in edges
    assert (world.f.key, world.m.key, "derived-from") in edges
    assert (world.m.key, world.x.key, "derived-from") in edges
    assert len(edges) == 5
    run = next(n for n in everything.nodes if n.node == world.run.key)
    assert run.title == "featurize" and run.params == {"window": 5}


def test_descendants_and_depth_cut(graph: Graph, world: World) -> None:
    down = graph.walk(world.a, "descendants")
    assert _keys(down) == {world.a.key, world.run.key, world.f.key, world.m.key, world.x.key}
    near = graph.walk(world.a, "descendants", depth=2)
    assert _keys(near) == {world.a.key, world.run.key, world.f.key}
    assert near.cut == "depth"
    leaf = graph.walk(world.x, "descendants", depth=1)
    assert _keys(leaf) == {world.x.key} and leaf.cut is None
    assert graph.walk(world.lone, "descendants").nodes[0].node == world.lone.key


def test_sync_is_incremental_and_picks_up_new_records(graph: Graph, world: World) -> None:
    again = graph.sync(world.client.meta)
    assert again.fetched == 0, "nothing new: only lists"
    from tests.lineage.conftest import _folder

    n = world.client.upload(
        "models",
        _folder(world.client.cache_dir.parent, "n"),
        "model v2",
        inputs=(bundle_ref(world.m),),
    ).bundle
    graph.sync(world.client.meta)
    assert bundle_node("models", n.id).key in _keys(graph.walk(world.a, "descendants"))


def bundle_ref(node: NodeId) -> BundleRef:
    return BundleRef(node.repo, node.id)


def test_time_budget_cuts_instead_of_timing_out(index: Index, world: World) -> None:
    graph = Graph(index)
    chain = 20_000
    nodes = [(f"run/c{i:06d}", "run", "", f"c{i:06d}") for i in range(chain)]
    edges = [(nodes[i][0], nodes[i + 1][0], "derived-from") for i in range(chain - 1)]
    graph.add_edges(edges, nodes)
    end = NodeId("run", f"c{chain - 1:06d}")
    full = graph.walk(end, "ancestors", depth=chain, budget=60.0)
    assert len(full.nodes) == chain and full.cut is None
    cut = graph.walk(end, "ancestors", depth=chain, budget=0.002)
    assert cut.cut == "time"
    assert cut.depth < chain and len(cut.nodes) == cut.depth + 1


def test_index_rebuilds_from_the_store(graph: Graph, world: World, index: Index) -> None:
    with index._write() as cur:
        for table in ("lineage_nodes", "lineage_edges", "lineage_seen"):
            cur.execute(f"DELETE FROM {table}")
    store: ObjectStore = world.client.meta
    with index._write() as cur:
        cur.execute("DELETE FROM runs")
        cur.execute("DELETE FROM index_meta WHERE key = 'watermark'")
    Graph(index).sync(store)
    assert _keys(graph.walk(world.x, "ancestors")) == {
        world.x.key,
        world.m.key,
        world.f.key,
        world.a2.key,
        world.run.key,
        world.a.key,
    }


def test_closure_of_a_dag_with_many_path_lengths(index: Index) -> None:
    # Skip edges give each node many depths; the closure (depth=None, what cascades use) keeps one
    # row per node, and finds exactly the nodes downstream.
    graph = Graph(index)
    n = 3_000
    nodes = [(f"record/s{i:05d}", "record", "", f"s{i:05d}") for i in range(n)] + [("record/x", "record", "", "x")]
    edges = [(nodes[i][0], nodes[j][0], "derived-from") for i in range(n) for j in (i + 1, i + 2, i + 3) if j < n]
    edges.append(("record/x", nodes[5][0], "derived-from"))
    graph.add_edges(edges, nodes)
    from datarun.lineage import NodeId

    down = graph.walk(NodeId("record", "s00010"), "descendants", depth=None, budget=120.0)
    assert down.cut is None
    assert {x.node for x in down.nodes} == {f"record/s{i:05d}" for i in range(10, n)}
    up = graph.walk(NodeId("record", "s00007"), "ancestors", depth=None, budget=120.0)
    assert {x.node for x in up.nodes} == {f"record/s{i:05d}" for i in range(8)} | {"record/x"}


class _ReadKeys(CountingStore):
    """Counts like CountingStore and also remembers which keys were read."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.read_keys: list[str] = []

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        self.read_keys.append(key)
        return super().read(key)


def test_sync_follows_the_listings_and_reads_no_record_a_row_carries(index: Index, world: World, graph: Graph) -> None:
    """A new graph finds the repos with one folder listing, reads each repo's listing (one GET,
    one LIST), and reads only the bundle records no row carries: every one of a repo with no
    listing, a tail entry's, and not one whose commit has not landed yet."""
    meta = world.client.meta
    for repo in ("feat", "models"):
        assert BundleListing(meta, repo, world.client.get_repo(repo).created).compact()
    for info in list(meta.list("listings/raw/")):  # `raw` as in a store older than the index
        meta.delete(info.key)
    raw_bundles = sorted(i.key for i in meta.list(bundles_prefix("raw")))
    assert raw_bundles
    store = _ReadKeys(meta)
    follower = Graph(index)
    with index._write() as cur:  # a new graph: the tables and the store it followed, forgotten
        for table in ("lineage_nodes", "lineage_edges", "lineage_seen"):
            cur.execute(f"DELETE FROM {table}")
        cur.execute("DELETE FROM index_meta WHERE key = 'lineage_store'")
    follower.sync(store)
    assert store.folder_prefixes == ["repos/"]
    assert "repos/" not in store.prefixes, "a new graph lists the repos, not every key under repos/"
    read = sorted(k for k in store.read_keys if "/bundles/" in k)
    assert read == raw_bundles, "the bundles of the repos with a listing came from its rows"
    for node, direction in ((world.a, "descendants"), (world.x, "ancestors"), (world.lone, "descendants")):
        built = follower.walk(node, direction)
        full = graph.walk(node, direction)
        assert _keys(built) == _keys(full)
        assert {(e.src, e.dst, e.rel) for e in built.edges} == {(e.src, e.dst, e.rel) for e in full.edges}
        assert {n.node: n.title for n in built.nodes} == {n.node: n.title for n in full.nodes}

    from tests.lineage.conftest import _folder

    n = world.client.upload(
        "models", _folder(world.client.cache_dir.parent, "n2"), "model v3", inputs=(bundle_ref(world.m),)
    ).bundle
    pending = {**n.to_json(), "id": new_ksuid(), "message": "a commit under way"}
    listing = BundleListing(meta, "models", world.client.get_repo("models").created)
    listing.will_commit(pending)  # its tail entry, and no bundle record yet
    store.prefixes.clear()
    store.folder_prefixes.clear()
    store.read_keys.clear()
    follower.sync(store)
    assert "repos/" not in store.prefixes, "a synced graph never lists the whole store"
    assert not store.folder_prefixes, "nor the repos: it follows the listings"
    assert not [k for k in store.read_keys if k.endswith("/base.json")], "unchanged bases are HEADed, not read"
    assert [k for k in store.read_keys if "/bundles/" in k] == [
        bundle_key("models", n.id),
        bundle_key("models", pending["id"]),
    ]
    down = _keys(follower.walk(world.a, "descendants"))
    assert bundle_node("models", n.id).key in down
    assert bundle_node("models", pending["id"]).key not in {n.node for n in follower.walk(world.m, "descendants").nodes}

    meta.put(bundle_key("models", pending["id"]), dumps(pending))  # the commit lands
    store.read_keys.clear()
    follower.sync(store)
    assert [k for k in store.read_keys if "/bundles/" in k] == [bundle_key("models", pending["id"])]
    assert bundle_node("models", pending["id"]).key in _keys(follower.walk(world.m, "descendants"))

    assert listing.compact()  # the tail folded into a new base: read again, and no record with it
    store.read_keys.clear()
    follower.sync(store)
    assert [k for k in store.read_keys if "/bundles/" in k or "/base.json" in k] == ["listings/models/base.json"]
