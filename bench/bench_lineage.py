"""Lineage benchmark: walks of a 100k-node graph in the SQLite index, the same ancestor query by
walking the store's records without the index, and an invalidation cascade over 10,000 descendants
on a local store and on Azurite (with the requests it makes). Each bar is measured ``--rounds``
times (default 3) and reported as a range.

    .venv/bin/python bench/bench_lineage.py              # the bars
    .venv/bin/python bench/bench_lineage.py --small      # 10k nodes, 1,000-node cascade: a smoke run
    .venv/bin/python bench/bench_lineage.py --no-azurite

Rows:
- *ancestors / descendants, depth 50*: ``Graph.walk`` (one recursive query, then the nodes, edges
  and invalid marks of the answer) from random starts in a synthetic graph of long chains, a
  1,000-wide fan-out with a chain under each child, and stacks of diamonds; p50 and p90 of
  ``--reps`` starts each; the fan-out root's descendants (11k nodes) is its own row.
- *store walk*: the same ancestors query answered by reading each external record from the
  store and following ``derived_from`` (breadth first, reads in parallel per level) - what a
  datarun without the index would do - next to the index answer on the same records; the ratio.
- *cascade*: ``invalidate`` of the root of 10,000 descendants (records), written to the store:
  the sync, the recursive descendants query, 10,001 create-only marks and the done marker; the
  requests are counted at the store API. *dry run == real* checks that every node the dry run
  listed is invalid afterwards, and no other.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datarun.catalog import open_index  # noqa: E402
from datarun.ids import new_ksuid  # noqa: E402
from datarun.lineage import Graph, NodeId, invalidate  # noqa: E402
from datarun.lineage.layout import FORMAT, RECORDS, dumps, loads  # noqa: E402
from datarun.store import LocalStore  # noqa: E402
from datarun.store.base import ObjectStore  # noqa: E402
from tests.store.counting import CountingStore  # noqa: E402
from tests.store.emulators import azurite_missing, start_azurite  # noqa: E402


def synthetic(scale: float) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]], dict[str, list[str]]]:
    """~100k nodes at scale 1: 50 chains of 1,000, a 1,000-wide fan-out with 10 under each child,
    20 stacks of 1,000 two-wide diamond layers. Chains alternate bundles and runs, as real ones do."""
    nodes: list[tuple[str, str, str, str]] = []
    edges: list[tuple[str, str, str]] = []
    starts: dict[str, list[str]] = {"chain": [], "fan": [], "diamond": []}

    def node(kind: str, name: str) -> str:
        key = f"bundle/syn/{name}" if kind == "bundle" else f"{kind}/{name}"
        nodes.append((key, kind, "syn" if kind == "bundle" else "", name))
        return key

    chain_len = int(1000 * scale)
    for c in range(50):
        prev = None
        for i in range(chain_len):
            key = node("bundle" if i % 2 == 0 else "run", f"c{c}-{i}")
            if prev:
                edges.append((prev, key, "wrote" if i % 2 == 0 else "read"))
            prev = key
            starts["chain"].append(key)
    root = node("bundle", "fan-root")
    for f in range(int(1000 * scale)):
        prev = root
        for i in range(10):
            key = node("record", f"f{f}-{i}")
            edges.append((prev, key, "derived-from"))
            prev = key
            starts["fan"].append(key)
    layers = int(1000 * scale)
    for s in range(20):
        above: list[str] = []
        for layer in range(layers):
            here = [node("bundle", f"d{s}-{layer}-{k}") for k in range(2)]
            edges += [(a, b, "derived-from") for a in above for b in here]
            above = here
            starts["diamond"] += here
    return nodes, edges, starts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def walks(work: Path, scale: float, reps: int, seed: int) -> dict[str, Any]:
    nodes, edges, starts = synthetic(scale)
    path = work / f"syn-{seed}.sqlite"
    with open_index(f"sqlite://{path}", work) as index:
        graph = Graph(index)
        began = time.perf_counter()
        graph.add_edges(edges, nodes)
        load = time.perf_counter() - began
        rng = random.Random(seed)
        out: dict[str, Any] = {"nodes": len(nodes), "edges": len(edges), "load_s": load}
        everything = starts["chain"] + starts["fan"] + starts["diamond"]
        for direction in ("ancestors", "descendants"):
            times = []
            sizes = []
            for _ in range(reps):
                key = rng.choice(everything)
                kind, _, rest = key.partition("/")
                start = NodeId(kind, rest.split("/")[-1], "syn" if kind == "bundle" else "")
                t = time.perf_counter()
                w = graph.walk(start, direction, depth=50)
                times.append(time.perf_counter() - t)
                sizes.append(len(w.nodes))
            out[direction] = (pct(times, 0.5), pct(times, 0.9), statistics.median(sizes))
        times = []
        for _ in range(max(3, reps // 10)):
            t = time.perf_counter()
            w = graph.walk(NodeId("bundle", "fan-root", "syn"), "descendants", depth=50)
            times.append(time.perf_counter() - t)
        out["fan-root"] = (pct(times, 0.5), len(w.nodes))
    path.unlink()
    return out


# -- store walk versus index, on the same records ------------------------------------------


def write_records(store: ObjectStore, parents_of: dict[str, list[str]]) -> None:
    def put(item: tuple[str, list[str]]) -> None:
        rid, parents = item
        doc = {"format": FORMAT, "id": rid, "kind": "step", "uri": f"bench://{rid}", "tags": [], "meta": {}}
        doc |= {"derived_from": [f"record/{p}" for p in parents], "created": "2026-01-01T00:00:00Z", "author": ""}
        store.put_if_absent(f"{RECORDS}{rid}.json", dumps(doc))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, parents_of.items()))


def store_walk(store: ObjectStore, start: str, depth: int) -> set[str]:
    """Ancestors by reading records: one level at a time, the level's reads in parallel."""
    seen = {start}
    level = [start]
    with ThreadPoolExecutor(32) as pool:
        for _ in range(depth):
            docs = list(pool.map(lambda rid: loads(rid, store.read(f"{RECORDS}{rid}.json")[0]), level))
            nxt = []
            for doc in docs:
                for parent in doc["derived_from"]:
                    rid = parent.split("/", 1)[1]
                    if rid not in seen:
                        seen.add(rid)
                        nxt.append(rid)
            if not nxt:
                break
            level = nxt
    return seen


def lattice(width: int, layers: int) -> tuple[dict[str, list[str]], str]:
    """A diamond lattice: each record derived from every record of the layer above."""
    parents_of: dict[str, list[str]] = {}
    above: list[str] = []
    for _ in range(layers):
        here = [new_ksuid() for _ in range(width)]
        for rid in here:
            parents_of[rid] = list(above)
        above = here
    return parents_of, above[0]


def compare(store: ObjectStore, work: Path, tag: str) -> tuple[float, float, int]:
    parents_of, bottom = lattice(3, 60)
    write_records(store, parents_of)
    with open_index(f"sqlite://{work / f'cmp-{tag}.sqlite'}", work) as index:
        graph = Graph(index)
        graph.sync(store)
        t = time.perf_counter()
        w = graph.walk(NodeId("record", bottom), "ancestors", depth=50)
        indexed = time.perf_counter() - t
    t = time.perf_counter()
    found = store_walk(store, bottom, 50)
    walked = time.perf_counter() - t
    assert found == {n.id for n in w.nodes}, "the two answers differ"
    return indexed, walked, len(found)


# -- cascade --------------------------------------------------------------------------------


def fan(n: int) -> tuple[dict[str, list[str]], str, str]:
    """A root with ``n`` descendants: 100 children, each heading a chain; and one bystander."""
    root = new_ksuid()
    parents_of: dict[str, list[str]] = {root: []}
    per = max(1, n // 100)
    made = 0
    while made < n:
        prev = root
        for _ in range(min(per, n - made)):
            rid = new_ksuid()
            parents_of[rid] = [prev]
            prev = rid
            made += 1
    bystander = new_ksuid()
    parents_of[bystander] = []
    return parents_of, root, bystander


def cascade(store: ObjectStore, work: Path, n: int, tag: str) -> dict[str, Any]:
    parents_of, root, bystander = fan(n)
    write_records(store, parents_of)
    counting = CountingStore(store)
    with open_index(f"sqlite://{work / f'cascade-{tag}.sqlite'}", work) as index:
        graph = Graph(index)
        t = time.perf_counter()
        graph.sync(counting)
        first_sync = time.perf_counter() - t
        counting.calls.clear()
        node = NodeId("record", root)
        t = time.perf_counter()
        dry = invalidate(counting, graph, node, reason="bench", who="bench", dry_run=True)
        dry_s = time.perf_counter() - t
        dry_calls = Counter(counting.calls)
        counting.calls.clear()
        t = time.perf_counter()
        real = invalidate(counting, graph, node, reason="bench", who="bench")
        real_s = time.perf_counter() - t
        calls = Counter(counting.calls)
        every = [f"record/{rid}" for rid in parents_of]
        invalid = set(graph.invalid_reasons(every))
    same = invalid == set(dry.nodes) and f"record/{bystander}" not in invalid and len(invalid) == n + 1
    assert real.written == n + 1
    return {
        "first_sync": first_sync,
        "dry": dry_s,
        "dry_calls": dry_calls,
        "real": real_s,
        "calls": calls,
        "same": same,
        "nodes": len(dry.nodes),
    }


def rng_fmt(values: list[float], scale: float = 1000.0, unit: str = "ms") -> str:
    lo, hi = min(values) * scale, max(values) * scale
    return f"{lo:.1f}-{hi:.1f} {unit}" if scale == 1000.0 else f"{lo:.2f}-{hi:.2f} {unit}"


def calls_fmt(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items()))


def rounds(n: int, fn: Callable[[int], Any]) -> list[Any]:
    return [fn(i) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--no-azurite", action="store_true")
    args = parser.parse_args()
    scale = 0.1 if args.small else 1.0
    cascade_n = 1000 if args.small else 10_000
    with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp:
        work = Path(tmp)
        w = rounds(args.rounds, lambda i: walks(work, scale, args.reps, i))
        local_cmp = rounds(args.rounds, lambda i: compare(LocalStore(work / f"cmp{i}"), work, f"l{i}"))
        local_cas = rounds(args.rounds, lambda i: cascade(LocalStore(work / f"cas{i}"), work, cascade_n, f"l{i}"))
        azure_cmp: list[Any] = []
        azure_cas: list[Any] = []
        missing = azurite_missing()
        if not args.no_azurite and missing:
            print(f"skipping Azurite: {missing}", file=sys.stderr)
        if not args.no_azurite and not missing:
            server = start_azurite(work / "azurite")
            try:
                azure_cmp = rounds(args.rounds, lambda i: compare(server.store(server.new_bucket()), work, f"a{i}"))
                azure_cas = rounds(
                    args.rounds, lambda i: cascade(server.store(server.new_bucket()), work, cascade_n, f"a{i}")
                )
            finally:
                server.stop()
    print(f"\nsynthetic graph: {w[0]['nodes']:,} nodes, {w[0]['edges']:,} edges; {args.rounds} rounds, ranges\n")
    print("| measurement | datarun (index) | peer / detail | bar |")
    print("|---|---|---|---|")
    for d in ("ancestors", "descendants"):
        p50 = [r[d][0] for r in w]
        p90 = [r[d][1] for r in w]
        size = w[0][d][2]
        ok = "PASS" if max(p50) < 0.1 else "FAIL"
        print(
            f"| {d}, depth 50, p50 (p90) | {rng_fmt(p50)} ({rng_fmt(p90)}) "
            f"| median answer {size:.0f} nodes | <100 ms {ok} |"
        )
    fr = [r["fan-root"][0] for r in w]
    print(
        f"| descendants of the 1,000-wide fan-out root, depth 50 | {rng_fmt(fr)} | {w[0]['fan-root'][1]:,} nodes | - |"
    )
    for name, rows in (("local", local_cmp), ("Azurite", azure_cmp)):
        if rows:
            idx = [r[0] for r in rows]
            walk = [r[1] for r in rows]
            ratio = [r[1] / r[0] for r in rows]
            print(
                f"| ancestors depth 50, {rows[0][2]} records, {name} | {rng_fmt(idx)} | store walk {rng_fmt(walk)}, "
                f"{min(ratio):.1f}-{max(ratio):.1f}x slower | ratio |"
            )
    for name, rows, bar in (("local", local_cas, 5.0), ("Azurite", azure_cas, 60.0)):
        if rows:
            real = [r["real"] for r in rows]
            ok = "PASS" if max(real) < bar else "FAIL"
            print(
                f"| cascade over {rows[0]['nodes'] - 1:,} descendants, {name} | {rng_fmt(real, 1.0, 's')} | "
                f"{calls_fmt(rows[0]['calls'])} | <{bar:.0f} s {ok} |"
            )
            print(
                f"| dry run, {name} | {rng_fmt([r['dry'] for r in rows], 1.0, 's')} | {calls_fmt(rows[0]['dry_calls'])}"
                f" | dry == real: {'PASS' if all(r['same'] for r in rows) else 'FAIL'} |"
            )
            print(
                f"| first sync of the {rows[0]['nodes']:,} records, {name} | "
                f"{rng_fmt([r['first_sync'] for r in rows], 1.0, 's')} | not a bar | - |"
            )


if __name__ == "__main__":
    main()
