"""Delete and rename through the CLI: the --yes guard, labels, tombstones, label history,
JSON summaries and the exit codes of the README table."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Env
from tests.gc.conftest import random_tree

__all__ = ["env"]
from tests.cli.conftest import env


def _upload(env: Env, path: Path, *extra: str) -> str:
    return env.ok("bundle", "upload", "--repo", "data", "--path", str(path), "--message", "m", *extra).last_line


def test_bundle_delete_needs_yes_and_refuses_labelled_bundles_unless_forced(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    first = _upload(env, random_tree(env.tmp / "a"), "--label", "latest")
    second = _upload(env, random_tree(env.tmp / "b"))
    no = env.run("bundle", "delete", "--repo", "data", "--bundle", second)
    assert no.code == 4 and "--yes" in no.err
    assert env.ok("bundle", "get", "--repo", "data", "--bundle", second)
    refused = env.run("bundle", "delete", "--repo", "data", "--bundle", first, "--yes")
    assert refused.code == 4 and "`latest`" in refused.err and "--force" in refused.err
    env.ok("label", "get", "--repo", "data", "--label", "latest")
    env.ok("bundle", "delete", "--repo", "data", "--bundle", first, "--yes", "--force")
    assert env.run("label", "get", "--repo", "data", "--label", "latest").code == 3
    assert env.run("bundle", "get", "--repo", "data", "--bundle", first).code == 3
    # The removed label's history is archived, and a new label of that name starts afresh.
    archived = list((env.store / "repos" / "data" / "label-history-removed" / "latest").rglob("*.json"))
    assert archived
    env.ok("label", "set", "--repo", "data", "--label", "latest", "--bundle", second)
    history = env.ok("label", "history", "--repo", "data", "--label", "latest", "--json").out
    assert [h["bundle"] for h in json.loads(history)] == [second]


def test_deleting_an_input_keeps_a_tombstone_and_lineage_says_deleted(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    env.ok("repo", "create", "--repo", "derived")
    source = _upload(env, random_tree(env.tmp / "a"))
    out = env.ok(
        "bundle",
        "upload",
        "--repo",
        "derived",
        "--path",
        str(random_tree(env.tmp / "b")),
        "--message",
        "m",
        "--input",
        f"data:{source}",
    ).last_line
    env.ok("bundle", "delete", "--repo", "data", "--bundle", source, "--yes")
    stone = json.loads((env.store / "repos" / "data" / "tombstones" / f"{source}.json").read_text())
    assert stone["id"] == source and stone["referenced_by"] == [f"bundle derived/{out}"]
    shown = env.ok("bundle", "get", "--repo", "derived", "--bundle", out).out
    assert f"input: data:{source} (deleted " in shown


def test_an_unreferenced_bundle_leaves_no_tombstone(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    b = _upload(env, random_tree(env.tmp / "a"))
    env.ok("bundle", "delete", "--repo", "data", "--bundle", b, "--yes")
    assert not (env.store / "repos" / "data" / "tombstones").exists()


def test_rename_keeps_bundles_labels_and_label_history(env: Env) -> None:
    env.ok("repo", "create", "--repo", "old", "--description", "d")
    env.run("repo", "create", "--repo", "data")
    path = random_tree(env.tmp / "a")
    one = env.ok("bundle", "upload", "--repo", "old", "--path", str(path), "--message", "1", "--label", "v").last_line
    (path / "more.bin").write_bytes(b"more")
    two = env.ok("bundle", "upload", "--repo", "old", "--path", str(path), "--message", "2", "--label", "v").last_line
    assert env.run("repo", "rename", "--repo", "old", "--to", "new").code == 4  # no --yes
    taken = env.run("repo", "rename", "--repo", "old", "--to", "data", "--yes")
    assert taken.code == 4 and "already exists" in taken.err
    env.ok("repo", "rename", "--repo", "old", "--to", "new", "--yes")
    assert env.run("repo", "get", "--repo", "old").code == 3
    history = json.loads(env.ok("label", "history", "--repo", "new", "--label", "v", "--json").out)
    assert [(h["seq"], h["bundle"], h["repo"]) for h in history] == [(1, one, "new"), (2, two, "new")]
    assert env.ok("bundle", "verify", "--repo", "new", "--bundle", one).code == 0
    assert json.loads(env.ok("repo", "get", "--repo", "new", "--json").out)["description"] == "d"


def test_repo_delete_then_gc_frees_the_data(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    _upload(env, random_tree(env.tmp / "a"), "--label", "x")
    packs = env.store / "packs"
    assert any(packs.rglob("*"))
    summary = env.run("repo", "delete", "--repo", "data")
    assert summary.code == 4 and "1 bundles" in summary.err and "1 labels" in summary.err
    env.ok("repo", "delete", "--repo", "data", "--yes")
    assert env.run("repo", "get", "--repo", "data").code == 3
    young = json.loads(env.ok("gc", "--json").out)  # default grace 24h: nothing goes yet
    assert young["deleted_packs"] == 0 and young["kept_young"] > 0
    dry = json.loads(env.ok("gc", "--grace", "0", "--dry-run", "--json").out)
    assert dry["deleted_packs"] >= 1 and any(p.is_file() for p in packs.rglob("*"))
    done = json.loads(env.ok("gc", "--grace", "0", "--json").out)
    assert done["deleted_packs"] == dry["deleted_packs"]
    assert not any(p.is_file() for p in packs.rglob("*"))
    assert env.ok("check", "--read-data").code == 0


def test_gc_rejects_a_bad_grace(env: Env) -> None:
    bad = env.run("gc", "--grace", "soon")
    assert bad.code == 2 and "--grace `soon`" in bad.err


def test_check_exits_5_and_names_the_object(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    _upload(env, random_tree(env.tmp / "a"))
    pack = next(p for p in (env.store / "packs").rglob("*") if p.is_file())
    pack.unlink()
    bad = env.run("check")
    assert bad.code == 5 and pack.name in bad.out


def test_log_format_json_gives_the_transfer_summary(env: Env) -> None:
    env.ok("repo", "create", "--repo", "data")
    path = random_tree(env.tmp / "a", files=2, size=100_000)
    first = env.ok("--log-format", "json", "bundle", "upload", "--repo", "data", "--path", str(path), "--message", "m")
    lines = [json.loads(line) for line in first.err.splitlines() if line.startswith("{")]
    (summary,) = [line for line in lines if line.get("event") == "transfer"]
    assert summary["level"] == "info" and summary["bundle"] == first.last_line
    assert summary["bytes"] == 200_000 and summary["chunks_new"] == 2 and summary["chunks_deduplicated"] == 0
    assert summary["seconds"] > 0 and summary["throughput"] > 0
    again = env.ok("--log-format", "json", "bundle", "upload", "--repo", "data", "--path", str(path), "--message", "m")
    (second,) = [json.loads(x) for x in again.err.splitlines() if x.startswith("{") and '"transfer"' in x]
    assert second["chunks_new"] == 0 and second["chunks_deduplicated"] == 2
    record = json.loads(env.ok("bundle", "get", "--repo", "data", "--bundle", again.last_line, "--json").out)
    assert record["provenance"]["transfer"]["chunks_deduplicated"] == 2
