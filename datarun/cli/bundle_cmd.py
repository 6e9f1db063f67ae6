"""`datarun bundle upload|list|download|diff|verify|get`, in datamon's vocabulary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from datarun.cli.common import info, json_option, print_json, progress_bar, state, with_store
from datarun.cli.lineage_cmd import allow_invalid_option, invalid_reasons, neighbours, refuse_invalid
from datarun.errors import IntegrityError, UsageError
from datarun.model import FILE, BundleRef, FileEntry

if TYPE_CHECKING:
    from datarun.repo import Client


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def bundle_selector(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--label", default=None, help="Select the bundle by label.")(fn)
    fn = click.option("--bundle", "bundle_id", default=None, help="Select the bundle by id.")(fn)
    fn = click.option("--repo", required=True, help="Repo name.")(fn)
    return fn


def _entry_json(e: FileEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": e.path,
        "kind": {"f": "file", "d": "dir", "l": "symlink"}[e.kind],
        "size": e.size,
        "mode": oct(e.mode),
    }
    if e.kind == FILE:
        out["chunks"] = [c.digest.hex() for c in e.chunks]
    if e.target:
        out["target"] = e.target
    return out


class _BundleGroup(click.Group):
    """`bundle mount` is imported when asked for: the mount's options and helpers are not what
    an upload or a download starts with."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "mount"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "mount" and cmd_name not in self.commands:
            from datarun.cli.mount_cmd import mount

            self.add_command(mount)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_BundleGroup)
def bundle() -> None:
    """Upload, list, download, diff and verify bundles."""


def _parse_input(value: str) -> BundleRef:
    repo, sep, bundle_id = value.partition(":")
    if not sep or not repo or not bundle_id:
        raise UsageError(f"--input `{value}` must look like REPO:BUNDLE_ID")
    return BundleRef(repo, bundle_id)


@bundle.command("upload")
@click.option("--path", required=True, type=click.Path(), help="Folder to upload.")
@click.option("--message", required=True, help="What this bundle is.")
@click.option("--repo", required=True, help="Repo to upload into.")
@click.option("--label", default=None, help="Label to move to the new bundle.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="REPO:BUNDLE",
    help="Provenance: a bundle this data was made from (repeatable).",
)
@click.option("--no-hash-cache", is_flag=True, help="Re-read every file instead of trusting the local hash cache.")
@with_store
@json_option
def upload(
    path: str, message: str, repo: str, label: str | None, inputs: tuple[str, ...], no_hash_cache: bool, as_json: bool
) -> None:
    """Upload a folder as a new bundle. The last line of output is the bundle id."""
    client = state().client()
    refs = tuple(_parse_input(i) for i in inputs)
    with progress_bar("uploading") as bar:
        result = client.upload(
            repo, path, message, label=label, inputs=refs, progress=bar, use_hash_cache=not no_hash_cache
        )
    s = result.stats
    logging.getLogger("datarun.transfer").info(
        "upload finished",
        extra={
            "event": "transfer",
            "fields": {"repo": repo, "bundle": result.bundle.id, **result.bundle.provenance.transfer},
        },
    )
    info(
        f"uploaded {s.files} files ({_human(s.bytes_total)}) in {result.seconds:.2f}s: "
        f"{s.chunks_new} new chunks, {_human(s.bytes_stored)} written in {s.packs} packs"
        + (f"; label `{label}` -> {result.bundle.id}" if label else "")
    )
    if as_json:
        print_json(
            {
                "bundle": result.bundle.to_json(),
                "label": result.label.to_json() if result.label else None,
                "stats": {k: v for k, v in vars(s).items()},
                "seconds": result.seconds,
            }
        )
    click.echo(result.bundle.id)


@bundle.group("list", invoke_without_command=True)
@click.option("--repo", default=None, help="Repo name.")
@with_store
@json_option
@click.pass_context
def list_(ctx: click.Context, repo: str | None, as_json: bool) -> None:
    """List bundles: id , time , message. `bundle list files` lists a bundle's files."""
    if ctx.invoked_subcommand is not None:
        return
    if not repo:
        raise click.UsageError("Missing option '--repo'.")
    client = state().client()
    if as_json:
        bundles = client.list_bundles(repo)
        bad = invalid_reasons([f"bundle/{repo}/{b.id}" for b in bundles])
        print_json([{**b.to_json(), "invalid": f"bundle/{repo}/{b.id}" in bad} for b in bundles])
        return
    rows = client.list_bundle_rows(repo)
    bad = invalid_reasons([f"bundle/{repo}/{i}" for i, _, _ in rows])
    # One write: 100,000 echo calls cost more than reading the listing.
    lines = [
        f"{i} , {created} , {message}{' , INVALID' if f'bundle/{repo}/{i}' in bad else ''}"
        for i, created, message in rows
    ]
    if lines:
        click.echo("\n".join(lines))


def _resolve(client: Client, repo: str, bundle_id: str | None, label: str | None) -> Any:
    return client.resolve(repo, bundle_id, label)


@list_.command("files")
@bundle_selector
@with_store
@json_option
def list_files(repo: str, bundle_id: str | None, label: str | None, as_json: bool) -> None:
    """List the files of a bundle: path , size."""
    client = state().client()
    found = _resolve(client, repo, bundle_id, label)
    entries = (e for e in client.list_files(found) if e.kind != "d")
    if as_json:
        print_json([_entry_json(e) for e in entries])
        return
    for e in entries:
        click.echo(f"{e.path} , {e.size}" if e.kind == FILE else f"{e.path} -> {e.target}")


@bundle.group("download", invoke_without_command=True)
@click.option("--repo", default=None, help="Repo name.")
@click.option("--bundle", "bundle_id", default=None, help="Select the bundle by id.")
@click.option("--label", default=None, help="Select the bundle by label.")
@click.option("--destination", default=None, type=click.Path(), help="Folder to download into.")
@click.option("--force", is_flag=True, help="Write into a non-empty destination.")
@allow_invalid_option
@with_store
@click.pass_context
def download(
    ctx: click.Context,
    repo: str | None,
    bundle_id: str | None,
    label: str | None,
    destination: str | None,
    force: bool,
    allow_invalid: bool,
) -> None:
    """Download a whole bundle. `bundle download file` fetches one file."""
    if ctx.invoked_subcommand is not None:
        return
    if not repo or not destination:
        raise click.UsageError("Missing option '--repo' or '--destination'.")
    client = state().client()
    found = _resolve(client, repo, bundle_id, label)
    refuse_invalid(repo, found.id, allow_invalid)
    with progress_bar("downloading", found.total_size) as bar:
        done = client.download(found, destination, force=force, progress=bar)
    info(f"downloaded {done.files} files ({_human(done.bytes)}) of bundle {found.id} to {destination}")


@download.command("file")
@click.option("--file", "file_path", required=True, help="Path of the file inside the bundle.")
@bundle_selector
@click.option("--destination", required=True, type=click.Path(), help="Folder to download into.")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@with_store
def download_file(
    file_path: str, repo: str, bundle_id: str | None, label: str | None, destination: str, force: bool
) -> None:
    """Download one file of a bundle to DESTINATION/<file>."""
    client = state().client()
    found = _resolve(client, repo, bundle_id, label)
    final = client.download_file(found, file_path, destination, force=force)
    info(f"downloaded {file_path} to {final}")


@bundle.command("diff")
@bundle_selector
@click.option("--with-repo", default=None, help="Repo of the other bundle (default: --repo).")
@click.option("--with-bundle", default=None, help="The other bundle, by id.")
@click.option("--with-label", default=None, help="The other bundle, by label.")
@with_store
@json_option
def diff(
    repo: str,
    bundle_id: str | None,
    label: str | None,
    with_repo: str | None,
    with_bundle: str | None,
    with_label: str | None,
    as_json: bool,
) -> None:
    """Compare two bundles: `+` added, `-` removed, `M` modified (relative to the first)."""
    client = state().client()
    old = _resolve(client, repo, bundle_id, label)
    new = _resolve(client, with_repo or repo, with_bundle, with_label)
    changes = list(client.diff(old, new))
    if as_json:
        print_json(
            [
                {
                    "path": c.path,
                    "change": c.change,
                    "old_size": c.old.size if c.old else None,
                    "new_size": c.new.size if c.new else None,
                }
                for c in changes
            ]
        )
        return
    marks = {"added": "+", "removed": "-", "modified": "M"}
    for c in changes:
        click.echo(f"{marks[c.change]} {c.path}")
    info(f"{len(changes)} differences between {old.id} and {new.id}")


@bundle.command("verify")
@bundle_selector
@with_store
@json_option
def verify(repo: str, bundle_id: str | None, label: str | None, as_json: bool) -> None:
    """Read every chunk of a bundle and check its hash; exit 5 naming the bad files."""
    client = state().client()
    found = _resolve(client, repo, bundle_id, label)
    with progress_bar("verifying", found.total_size) as bar:
        report = client.verify(found, progress=bar)
    if as_json:
        print_json(
            {
                "bundle": found.id,
                "files": report.files,
                "bytes": report.bytes,
                "ok": report.ok,
                "problems": report.problems,
            }
        )
    else:
        for problem in report.problems:
            click.echo(f"BAD {problem}")
    if not report.ok:
        raise IntegrityError(f"bundle {found.id} of repo `{repo}` has {len(report.problems)} damaged file(s)")
    info(f"bundle {found.id}: {report.files} files, {_human(report.bytes)}, every chunk verified")


@bundle.command("get")
@bundle_selector
@with_store
@json_option
def get(repo: str, bundle_id: str | None, label: str | None, as_json: bool) -> None:
    """Show a bundle's record, with its provenance."""
    found = _resolve(state().client(), repo, bundle_id, label)
    links = neighbours(repo, found.id)
    if as_json:
        print_json({**found.to_json(), "lineage": links})
        return
    p = found.provenance
    click.echo(f"id: {found.id}\nrepo: {found.repo}\ncreated: {found.created}\nmessage: {found.message}")
    click.echo(f"files: {found.file_count}\nsize: {found.total_size}\nauthor: {p.author_name} <{p.author_email}>")
    click.echo(f"host: {p.host}")
    from datarun.gc.lifecycle import lineage_status as lifecycle_status  # only `get` needs it: kept off every start

    for ref in p.inputs:
        status = lifecycle_status(state().client(), ref.repo, ref.bundle)
        click.echo(f"input: {ref.repo}:{ref.bundle}" + ("" if status == "ok" else f" ({status})"))
    for side in ("parents", "children"):
        for n in links[side]:
            name = f"{n['repo']}@{n['id']}" if n["type"] == "bundle" else f"{n['type']}:{n['id']}"
            click.echo(f"{side[:-1] if side == 'parents' else 'child'}: {name} {n['title']}".rstrip())
    for reason in links["invalid_reasons"]:
        click.echo(f"INVALID: {reason}")
