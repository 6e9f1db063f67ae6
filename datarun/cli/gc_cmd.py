"""`datarun gc`, `datarun bundle delete`, `datarun repo delete` and `datarun repo rename`.

Deletes remove records only and say what goes; the bytes come back with the next `gc` once the
grace period has passed (FORMAT.md, "Garbage collection").
"""

from __future__ import annotations

import logging
import re
import time

import click

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.errors import ConflictError, UsageError

log = logging.getLogger("datarun.gc")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float:
    """``24h``, ``90m``, ``30s``, ``2d`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not m:
        raise UsageError(f"--grace `{value}` is not a duration; write it like 24h, 90m, 30s or 0")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def _guard(yes: bool, what: str) -> None:
    if not yes:
        raise ConflictError(f"{what}; nothing was deleted. Pass --yes to go ahead")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Report what would go; change nothing.")
@click.option("--grace", default="24h", show_default=True, help="How long an object must have been unreferenced.")
@click.option(
    "--max-unused",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Repack a live pack once more than this share of its bytes is dead (1 = never repack).",
)
@click.option("--commit-timeout", default="120s", show_default=True, help="When an announced commit counts as dead.")
@click.option("--break-lock", "break_", is_flag=True, help="Remove the lock of a gc that died, then run.")
@with_store
@json_option
def gc(dry_run: bool, grace: str, max_unused: float, commit_timeout: str, break_: bool, as_json: bool) -> None:
    """Reclaim packs, index segments and manifests that no bundle references.

    Safe while uploads run, from any host: an object goes only once it has been unreferenced
    for the grace period, and an upload whose data a sweep took is refused, never committed.
    """
    # Imported here: the collector is heavy and only `gc` needs it (see cli/main.py, _LAZY).
    from datarun.gc.collect import GcOptions, break_lock, collect
    from datarun.gc.repack import repack_packs

    client = state().client()
    if break_:
        break_lock(client.meta)
    options = GcOptions(parse_duration(grace), dry_run, max_unused, parse_duration(commit_timeout), client.workers * 2)
    started = time.perf_counter()
    report = collect(client.meta, client.blobs, options, info, repack=repack_packs)
    seconds = time.perf_counter() - started
    log.info("gc finished", extra={"event": "gc", "fields": {**report.to_json(), "seconds": round(seconds, 3)}})
    if as_json:
        print_json({**report.to_json(), "seconds": seconds})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{report.bundles} bundles reference {report.live_manifests} manifests and {report.live_packs} packs; "
        f"{verb} {report.deleted_packs} packs, {report.deleted_segments} index segments and "
        f"{report.deleted_manifests} manifests ({_human(report.freed_bytes)})"
    )
    if report.repacked:
        click.echo(f"repacked {report.repacked} packs, freeing {_human(report.repack_freed_bytes)}")
    if report.kept_young and report.reclaimable_after is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.reclaimable_after))
        click.echo(
            f"{report.kept_young} unreferenced objects are younger than --grace {grace}; "
            f"a gc after {when} can take them"
        )


@click.command("delete")
@click.option("--repo", required=True, help="Repo name.")
@click.option("--bundle", "bundle_id", required=True, help="Bundle id.")
@click.option("--force", is_flag=True, help="Also remove the labels that point at the bundle.")
@click.option("--yes", is_flag=True, help="Really delete (without it, only the summary is shown).")
@with_store
@json_option
def bundle_delete(repo: str, bundle_id: str, force: bool, yes: bool, as_json: bool) -> None:
    """Delete a bundle. Its data goes at the next gc after the grace period."""
    from datarun.gc import lifecycle

    client = state().client()
    plan = lifecycle.plan_bundle_delete(client, repo, bundle_id)
    b = plan.bundle
    summary = f"bundle `{b.id}` of repo `{repo}`: {b.file_count} files, {_human(b.total_size)}"
    if plan.labels:
        summary += (
            "; labels "
            + ", ".join(f"`{lab.name}`" for lab in plan.labels)
            + (" (removed, history archived)" if force else " point at it")
        )
    if plan.tombstone:
        summary += f"; a tombstone stays for {len(plan.referenced_by)} reference(s): " + ", ".join(plan.referenced_by)
    info(summary)
    _guard(yes, f"would delete {summary}")
    lifecycle.delete_bundle(client, plan, force=force)
    if as_json:
        print_json({"deleted": b.to_json(), "labels": [lab.name for lab in plan.labels], "tombstone": plan.tombstone})
    info(f"deleted bundle `{b.id}`; run `datarun gc` to reclaim its data")


@click.command("delete")
@click.option("--repo", required=True, help="Repo name.")
@click.option("--yes", is_flag=True, help="Really delete (without it, only the summary is shown).")
@with_store
@json_option
def repo_delete(repo: str, yes: bool, as_json: bool) -> None:
    """Delete a repo with all its bundles and labels. Data goes at the next gc."""
    from datarun.gc import lifecycle

    client = state().client()
    plan = lifecycle.plan_repo_delete(client, repo)
    stones = sum(1 for b in plan.bundles if b.tombstone)
    summary = f"repo `{repo}`: {len(plan.bundles)} bundles ({_human(plan.total_size)}), {len(plan.labels)} labels" + (
        f"; {stones} bundles named as inputs elsewhere keep a tombstone" if stones else ""
    )
    info(summary)
    _guard(yes, f"would delete {summary}")
    lifecycle.delete_repo(client, plan)
    if as_json:
        print_json({"repo": repo, "bundles": len(plan.bundles), "labels": len(plan.labels), "tombstones": stones})
    info(f"deleted repo `{repo}`; run `datarun gc` to reclaim its data")


@click.command("rename")
@click.option("--repo", required=True, help="Current name.")
@click.option("--to", "new", required=True, help="New name.")
@click.option("--yes", is_flag=True, help="Really rename.")
@with_store
def repo_rename(repo: str, new: str, yes: bool) -> None:
    """Rename a repo, keeping its bundles, labels and their history. Stop writers of it first."""
    from datarun.gc import lifecycle

    client = state().client()
    found = client.get_repo(repo)
    bundles = len(client.list_bundles(found.name))
    labels = len(client.list_labels(found.name))
    summary = f"repo `{repo}` -> `{new}`: {bundles} bundles, {labels} labels with their history"
    info(summary)
    _guard(yes, f"would rename {summary}")
    moved = lifecycle.rename_repo(client, repo, new)
    info(f"renamed repo `{repo}` to `{new}` ({moved} records); lineage naming `{repo}` now reads as renamed")
