"""`datarun datamover`: back a shared folder up into a bundle, then list (and optionally
unlink) the old files that the committed bundle is verified to hold. datamon's flags."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import click

from datarun.cli.common import info, state, with_store
from datarun.errors import ConflictError, UsageError

LISTS = ("upload.list", "uploaded.list", "removable.list")
# Chosen by shape: strptime is lenient enough to read 10 digits with the 12-digit pattern.
_FORMATS = {12: "%y%m%d%H%M%S", 10: "%y%m%d%H%M"}


def parse_timestamp(text: str) -> float:
    """datamon's formats, in local time: 2006-Jan-02, 060102150405, 0601021504."""
    fmt = _FORMATS.get(len(text), "%Y-%b-%d") if text.isdigit() or "-" in text else ""
    try:
        if fmt:
            return datetime.strptime(text, fmt).timestamp()
    except ValueError:
        pass
    raise UsageError(f"timestamp `{text}` not understood; use 2006-Jan-02, 0601021504 or 060102150405 (local time)")


def _write_list(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)


@click.command()
@click.option("-d", "folder", required=True, type=click.Path(file_okay=False), help="Folder to back up.")
@click.option("-r", "--repo", default="datamover", show_default=True, help="Repo to upload into.")
@click.option("-l", "label", default=None, help="Label for the bundle (default datamover-<timestamp>).")
@click.option(
    "-t",
    "before",
    default="090725000000",
    show_default=True,
    help="Files strictly older than this are removable (2006-Jan-02, 0601021504, 060102150405; local time).",
)
@click.option(
    "-f",
    "list_dir",
    default="/tmp",  # noqa: S108 - datamon's default, kept for its users
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where upload.list, uploaded.list and removable.list are written.",
)
@click.option(
    "-c",
    "concurrency",
    default=200,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Parallel transfers (tune down to spare an NFS server).",
)
@click.option("-u", "unlink", is_flag=True, help="Unlink the files in removable.list after verification.")
@click.option("-m", "message", default=None, help="Bundle message.")
@with_store
def datamover(
    folder: str,
    repo: str,
    label: str | None,
    before: str,
    list_dir: str,
    concurrency: int,
    unlink: bool,
    message: str | None,
) -> None:
    """Back up FOLDER as a bundle; list what is safe to remove; optionally remove it."""
    cutoff = parse_timestamp(before)
    lists = Path(list_dir)
    existing = [name for name in LISTS if (lists / name).exists()]
    if existing:
        raise ConflictError(
            f"{', '.join(existing)} already exist in `{lists}`: a previous datamover run left them; "
            "move them away (they record what it did) and run again"
        )
    lists.mkdir(parents=True, exist_ok=True)
    root = Path(folder).absolute()
    if not root.is_dir():
        raise UsageError(f"-d `{root}` is not a folder")
    candidates = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    _write_list(lists / "upload.list", candidates)
    client = state().client()
    client.workers = min(concurrency, 64)
    stamp = time.strftime("%Y%m%d%H%M%S")
    label = label or f"datamover-{stamp}"
    result = client.upload(repo, root, message or f"datamover backup of {root} at {stamp}", label=label)
    # Verified = present in the committed bundle with the size and mtime the file has now, so a
    # file changed after it was read is never removed.
    uploaded: list[str] = []
    removable: list[str] = []
    for entry in client.list_files(result.bundle):
        if entry.kind != "f":
            continue
        uploaded.append(entry.path)
        try:
            st = (root / entry.path).stat()
        except FileNotFoundError:
            continue
        if st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns and st.st_mtime < cutoff:
            removable.append(entry.path)
    _write_list(lists / "uploaded.list", uploaded)
    _write_list(lists / "removable.list", removable)
    removed = 0
    if unlink:
        for rel in removable:
            try:
                os.unlink(root / rel)
                removed += 1
            except FileNotFoundError:
                pass
    info(
        f"bundle {result.bundle.id} (label `{label}`): {len(uploaded)} files uploaded, {len(removable)} removable"
        + (f", {removed} unlinked" if unlink else "")
    )
    click.echo(result.bundle.id)
