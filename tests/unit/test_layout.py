"""The key layout: one module, the same table as FORMAT.md, and a kind for every key datarun writes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from datarun import layout
from datarun.cache import KeySpec, OutputSpec, compute_key
from datarun.catalog import open_index
from datarun.gc.collect import GcOptions, collect
from datarun.gc.lifecycle import delete_bundle, plan_bundle_delete, remove_label, rename_repo
from datarun.lineage import Graph, add_record, bundle_node, invalidate
from datarun.lineage.actions import add_action, pending_reruns
from datarun.lineage.layout import dumps
from datarun.repo import Client
from datarun.runs import RUNNING, SUCCEEDED, BundleLink, Run, now_iso
from datarun.store import LocalStore
from datarun_operator.rerun import REFUSED, outcome_doc

FORMAT_MD = Path(__file__).resolve().parents[2] / "FORMAT.md"


def _format_table() -> list[tuple[str, str]]:
    """(key pattern, store) of each row of FORMAT.md §1.3."""
    text = FORMAT_MD.read_text()
    section = text[text.index("### 1.3 Key layout") :]
    section = section[: section.index("\n### ", 1) if "\n### " in section[1:] else None]
    rows = []
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (meta|blob) \|", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def test_kinds_are_the_rows_of_format_md_in_order() -> None:
    assert [(kind.pattern, kind.store) for kind in layout.KINDS] == _format_table()


def test_every_kind_is_found_under_its_prefix() -> None:
    examples = {
        "store-marker": layout.STORE_MARKER,
        "repo": layout.repo_key("images"),
        "bundle": layout.bundle_key("images", "2Aa" * 9),
        "label": layout.label_key("images", "Latest"),
        "label-history": layout.history_key("images", "Latest", 7),
        "manifest": layout.manifest_key("ab" * 32),
        "pack": layout.pack_key("cd" * 32),
        "index-segment": layout.segment_key("cd" * 32),
        "run-version": layout.run_record_key("2Aa" * 9, 3),
        "run-change": layout.run_change_key("2Ab" * 9),
        "run-snapshot": f"{layout.RUN_SNAPSHOTS_PREFIX}{'2Ab' * 9}.jsonl.zst",
        "lineage-record": "lineage/records/2Ac.json",
        "lineage-event": "lineage/events/2Ad.json",
        "lineage-mark": "lineage/marks/2Ad/000000000001.json",
        "lineage-done": "lineage/done/2Ad.json",
        "lineage-action": "lineage/actions/2Ae.json",
        "lineage-execution": "lineage/executions/2Ad/2Ae.json",
        "lineage-rerun": "lineage/reruns/2Aa/2Ad.2Ae.json",
        "cache-entry": layout.cache_entry_key("ab" * 32, "cd" * 32, "2Aa" * 9),
        "gc-lock": layout.GC_LOCK_KEY,
        "gc-generation": layout.GC_GENERATION_KEY,
        "gc-mark": layout.gc_mark_key("2Af" * 9),
        "gc-plan": layout.gc_plan_key("2Ag" * 9),
        "gc-commit": layout.gc_commit_key("2Aa" * 9),
        "bundle-tombstone": layout.tombstone_key("images", "2Aa" * 9),
        "removed-label-history": layout.archived_history_prefix("images", "Latest", "000000000003-ab12") + "x.json",
        "repo-tombstone": layout.repo_tombstone_key("images"),
    }
    assert sorted(examples) == sorted(kind.name for kind in layout.KINDS)
    for kind in layout.KINDS:
        key = examples[kind.name]
        assert key.startswith(kind.prefix)
        assert layout.kind_of(key) == kind
    assert layout.history_key("r", "l", 7) == "repos/r/label-history/l/000000000007.json"
    assert layout.segment_name(layout.segment_key("ef" * 32)) == "ef" * 32


def test_keys_datarun_never_writes_have_no_kind() -> None:
    for key in (
        "repos/r/notes.txt",
        "repos/r/sub/repo.json",
        "repos/r/bundles/x/y.json",
        "manifests/zz/ab12",
        "packs/ab",
        "index/",
        "other/thing",
        "datarun-store.json.bak",
        "runs/records/x.json",
        "runs/changes/a/b.json",
        "cache/task/key.json",
        "cache/task/key/run/extra.json",
        "gc/other.json",
        "gc/marks/.json",
        "gc/marks/a/b.json",
        "tombstones/repos/a/b.json",
        "tombstones/bundles/x.json",
        "repos/r/tombstones/x/y.json",
        "repos/r/label-history-removed/l/s.json",
    ):
        assert layout.kind_of(key) is None, key


def test_every_key_an_upload_and_a_run_write_has_a_kind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)
    store = LocalStore(tmp_path / "store")
    with Client(store, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        first = client.upload("r", src, "one", label="latest")
        (src / "c.txt").write_bytes(b"more\n")
        client.upload("r", src, "two", label="latest")
        client.set_label("r", "pinned", first.bundle.id)
        runs = client.runs
        run = runs.create(Run(id=runs.new_id(), start=now_iso(), title="t", phase=RUNNING))
        runs.update(run.id, lambda r: dataclasses.replace(r, tags=("done",)))
        cache_key = compute_key(KeySpec(command=("true",), outputs={"out": OutputSpec("r")}))
        done = runs.finish(run.id, SUCCEEDED, 0, (BundleLink("out", "r", first.bundle.id),))
        assert client.cache.record(done, cache_key) == ""
        # lineage: an external record, an action on the repo, and an invalidation that runs it
        add_record(client.meta, kind="model", uri="s3://m", derived_from=[bundle_node("r", first.bundle.id)])
        add_action(client, on="repo=r", do="move-label", label="latest")
        add_action(client, on="repo=r", do="rerun")
        with open_index(None, client.cache_dir) as index:
            graph = Graph(index)
            graph.sync(client.meta)
            invalidate(client.meta, graph, bundle_node("r", first.bundle.id), reason="bad", who="t", client=client)
            index.compact(client.meta)
        # the operator's outcome of the rerun the cascade left pending for it
        (pending,) = pending_reruns(client)
        key, doc = outcome_doc(pending, run.id, REFUSED, "no recorded resource", now_iso())
        client.meta.put_if_absent(key, dumps(doc))
        # garbage collection: a removed label, a deleted bundle a run names, a collection, a rename
        remove_label(client, client.get_label("r", "pinned"))
        delete_bundle(client, plan_bundle_delete(client, "r", first.bundle.id))
        collect(client.meta, client.blobs, GcOptions(grace=0))
        client.create_repo("s")
        client.upload("s", src, "three")
        rename_repo(client, "s", "t")
    # Deleted by design once their step is done, so a finished store has none of them.
    transient = {"gc-lock", "gc-plan", "gc-commit"}
    keys = [info.key for kind in {k.prefix for k in layout.KINDS} for info in store.list(kind)]
    kinds = set()
    for key in keys:
        kind = layout.kind_of(key)
        kinds.add(kind.name if kind is not None else f"unknown {key}")
    assert kinds == {kind.name for kind in layout.KINDS} - transient
    assert not {layout.GC_LOCK_KEY, layout.gc_commit_key(first.bundle.id)} & set(keys)
    assert layout.label_key("r", "latest") in keys
    assert layout.history_key("r", "latest", 2) in keys
