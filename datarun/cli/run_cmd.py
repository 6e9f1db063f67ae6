"""`datarun run upload|import|show|history|tag|annotate|hide|unhide|files|download`.

A run is an exekias-style record (datarun.runs): params, phase, inputs and outputs, tags and
annotations, every version kept. `run query` and `run list` come from the catalog
(datarun/cli/run_query_cmd.py) and are added to this group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from datarun import config as cfg
from datarun.cli.common import info, json_option, print_json, progress_bar, state, with_store
from datarun.errors import ConflictError, LocalIOError, NotFoundError, UsageError
from datarun.model import RunRecord, validate_label_name, validate_relpath, validate_repo_name
from datarun.runs import SOURCE_IMPORT, SUCCEEDED, BundleLink, Run, Source, stable_run_id
from datarun.runs.exekias import NAME_HINT, PARAMS_FILE, parse_folder_name, parse_params, parse_start, scan
from datarun.runs.model import parse_time, validate_annotation_key, validate_tag
from datarun.store import ObjectStore, open_store
from datarun.summary import TransferSummary

if TYPE_CHECKING:
    from datarun.repo import Client

OUTPUT_NAME = "files"
"""The output name of the bundle `run upload` makes from the folder."""


@click.group()
def run() -> None:
    """Runs: exekias-style records of params, inputs, outputs, tags and annotations, every version kept."""


def run_id_argument(fn: Any) -> Any:
    return click.argument("run_id", metavar="ID")(fn)


# -- upload -------------------------------------------------------------------------------------


def _folder_metadata(folder: Path, title: str | None, start: str | None) -> tuple[str, str]:
    parsed = parse_folder_name(folder.name)
    if parsed is None and (title is None or start is None):
        missing = " and ".join(f"--{name}" for name, v in (("title", title), ("start", start)) if v is None)
        raise UsageError(f"folder name `{folder.name}` is not {NAME_HINT}; rename the folder, or pass {missing}")
    start_iso = parse_start(start) if start is not None else parsed[0] if parsed else ""
    return start_iso, title if title is not None else parsed[1] if parsed else ""


def _read_params(folder: Path) -> dict[str, Any]:
    path = folder / PARAMS_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        info(f"no {PARAMS_FILE} in `{folder}`: the run's params are {{}}")
        return {}
    except OSError as err:
        raise LocalIOError(f"cannot read `{path}`: {err.strerror}; check its permissions") from None
    return parse_params(text, str(path))


@run.command("upload")
@click.option("--path", required=True, type=click.Path(), help="The run folder, named YYYYMMDD-HHMMSS-title.")
@click.option("--repo", default="runs", show_default=True, help="Repo the folder's files go to (created if missing).")
@click.option("--title", default=None, help="Title, when the folder name does not give one.")
@click.option("--start", default=None, help="Start time (ISO 8601 or YYYYMMDD-HHMMSS), overriding the folder name.")
@click.option("--label", default=None, help="Label to move to the new bundle.")
@with_store
@json_option
def upload(path: str, repo: str, title: str | None, start: str | None, label: str | None, as_json: bool) -> None:
    """Upload an exekias run folder: its files become a bundle, params.json the run's params.

    The last line of output is the run id."""
    folder = Path(path)
    if not folder.is_dir():
        raise LocalIOError(f"--path `{folder}` is not a folder; pass the run's folder")
    # Everything that can be wrong with the input is checked before a byte is uploaded.
    start_iso, run_title = _folder_metadata(folder.absolute(), title, start)
    params = _read_params(folder)
    validate_repo_name(repo)
    if label is not None:
        validate_label_name(label)
    client = state().client()
    _ensure_repo(client, repo)
    runs = client.runs
    run_id = runs.new_id()
    with progress_bar("uploading") as bar:
        result = client.upload(
            repo, folder, f"run {run_title}", label=label, run=RunRecord(run_id=run_id), progress=bar
        )
    created = runs.create(
        Run(
            id=run_id,
            start=start_iso,
            title=run_title,
            phase=SUCCEEDED,
            params=params,
            outputs=(BundleLink(OUTPUT_NAME, repo, result.bundle.id),),
            source=Source("bundle", folder.absolute().as_uri()),
            transfers={OUTPUT_NAME: result.summary},
        )
    )
    info(f"run `{run_title}`: {result.stats.files} files in bundle {result.bundle.id} of repo `{repo}`")
    if as_json:
        print_json(created.to_json())
    click.echo(created.id)


def _ensure_repo(client: Client, repo: str) -> None:
    try:
        client.get_repo(repo)
    except NotFoundError:
        client.create_repo(repo, "run files (datarun run upload)")
        info(f"created repo `{repo}`")


# -- import -------------------------------------------------------------------------------------


@run.command("import")
@click.argument("url_prefix", metavar="URL_PREFIX")
@click.option("--skip-bad", is_flag=True, help="Import the good folders and report the bad ones (default: refuse all).")
@with_store
@json_option
def import_(url_prefix: str, skip_bad: bool, as_json: bool) -> None:
    """Index an exekias container, bucket prefix or local folder WITHOUT copying its files.

    Every folder holding params.json becomes a run whose source is that folder. Re-importing is
    safe: a folder already imported keeps its run, and changed params become a new version."""
    source = _open_source(url_prefix)
    root = source.local_path()
    if root is not None and not root.is_dir():
        raise LocalIOError(f"`{root}` is not a folder; pass the folder that holds the run folders")
    try:
        found, refused = scan(source)
        if refused and not skip_bad:
            shown = "; ".join(f"{r.folder or '.'}: {r.reason}" for r in refused[:3])
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise UsageError(
                f"{len(refused)} folders of `{source.url}` cannot become runs: {shown}{more}; fix them, "
                "or pass --skip-bad to import the others; nothing was imported"
            )
        runs = state().client().runs
        created: list[Run] = []
        updated = unchanged = 0
        for item in found:
            uri = f"{source.url.rstrip('/')}/{item.folder}"
            run_id = stable_run_id(parse_time(item.start, "start").timestamp(), uri)
            new = Run(
                id=run_id,
                start=item.start,
                title=item.title,
                phase=SUCCEEDED,
                params=item.params,
                source=Source(SOURCE_IMPORT, uri),
            )
            try:
                created.append(runs.create(new))
                continue
            except ConflictError:
                pass  # imported before: bring it up to date below
            before = runs.get(run_id)
            after = runs.update(run_id, _refresh(new))
            if after.version == before.version:
                unchanged += 1
            else:
                updated += 1
    finally:
        source.close()
    for bad in refused:
        info(f"skipped {bad.folder or '.'}: {bad.reason}")
    info(
        f"imported {len(created)} new runs from `{source.url}`; {updated} updated, {unchanged} unchanged, "
        f"{len(refused)} skipped"
    )
    if as_json:
        print_json([c.to_json() for c in created])
        return
    for c in created:
        click.echo(c.id)


def _refresh(found: Run) -> Callable[[Run], Run]:
    """What a re-import changes: what the folder says (name and params.json), nothing people added."""
    return lambda r: replace(r, start=found.start, title=found.title, params=found.params)


def _open_source(url: str) -> ObjectStore:
    return open_store(url, cfg.load_config().credential)


# -- reading ------------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _links(links: tuple[BundleLink, ...]) -> str:
    return ", ".join(f"{link.name}={link.repo}/{link.bundle}" for link in links) or "-"


def _show_lines(r: Run) -> list[tuple[str, str]]:
    return [
        ("id", r.id),
        ("version", f"{r.version} (updated {r.updated})"),
        ("title", r.title),
        ("phase", r.phase),
        ("exit code", "-" if r.exit_code is None else str(r.exit_code)),
        ("start", r.start),
        ("end", r.end or "-"),
        ("params", _compact(r.params)),
        ("command", " ".join(r.command) or "-"),
        ("image", (r.image + (f"@{r.image_digest}" if r.image_digest else "")) or "-"),
        ("author", r.author or "-"),
        ("host", r.host or "-"),
        ("inputs", _links(r.inputs)),
        ("outputs", _links(r.outputs)),
        ("tags", ", ".join(r.tags) or "-"),
        ("annotations", ", ".join(f"{k}={v}" for k, v in sorted(r.annotations.items())) or "-"),
        ("hidden", "yes" if r.hidden else "no"),
        ("source", f"{r.source.kind} {r.source.uri}" if r.source else "-"),
        *((f"transfer {name}", _transfer_line(t)) for name, t in sorted(r.transfers.items())),
    ]


def _transfer_line(t: TransferSummary) -> str:
    mib = 1 << 20
    return (
        f"{t.direction} {t.bytes / mib:.1f} MiB in {t.files} files ({t.bytes_new / mib:.1f} MiB new), "
        f"chunks {t.chunks_new} new / {t.chunks_deduplicated} deduplicated, "
        f"{t.seconds:.2f} s, {t.throughput / mib:.1f} MiB/s"
    )


def _print_run(r: Run, as_json: bool) -> None:
    if as_json:
        print_json(r.to_json())
        return
    for key, value in _show_lines(r):
        click.echo(f"{key:<12} {value}")


@run.command("show")
@run_id_argument
@click.option("--version", type=int, default=None, help="Show this version (1 is the first) instead of the latest.")
@with_store
@json_option
def show(run_id: str, version: int | None, as_json: bool) -> None:
    """Show a run record (the latest version, or --version N)."""
    _print_run(state().client().runs.get(run_id, version), as_json)


def _changed(old: Run | None, new: Run) -> str:
    if old is None:
        return "created"
    a, b = old.to_json(), new.to_json()
    return ", ".join(k for k in b if k not in ("version", "updated") and a.get(k) != b[k]) or "-"


@run.command("history")
@run_id_argument
@with_store
@json_option
def history(run_id: str, as_json: bool) -> None:
    """Every version of a run, oldest first: version , updated , phase , author , changed fields."""
    versions = state().client().runs.history(run_id)
    if as_json:
        print_json([v.to_json() for v in versions])
        return
    previous: Run | None = None
    for v in versions:
        click.echo(f"{v.version} , {v.updated} , {v.phase} , {v.author} , {_changed(previous, v)}")
        previous = v


# -- updates --------------------------------------------------------------------------------------


def _report(r: Run, as_json: bool) -> None:
    if as_json:
        print_json(r.to_json())
    info(f"run {r.id} is at version {r.version}")


@run.command("tag")
@run_id_argument
@click.argument("tags", nargs=-1, required=True, metavar="TAG...")
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@with_store
@json_option
def tag(run_id: str, tags: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Add (or --remove) tags; a new version of the run."""
    for t in tags:
        validate_tag(t)
    _report(state().client().runs.tag(run_id, tags, remove=remove), as_json)


@run.command("annotate")
@run_id_argument
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@with_store
@json_option
def annotate(run_id: str, pairs: tuple[str, ...], as_json: bool) -> None:
    """Set free annotations (KEY=VALUE); a new version of the run."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"annotation `{pair}` must look like KEY=VALUE")
        values[validate_annotation_key(key)] = value
    _report(state().client().runs.annotate(run_id, values), as_json)


@run.command("hide")
@run_id_argument
@with_store
@json_option
def hide(run_id: str, as_json: bool) -> None:
    """Hide a run from queries and lists (it stays readable; `unhide` brings it back)."""
    _report(state().client().runs.set_hidden(run_id, True), as_json)


@run.command("unhide")
@run_id_argument
@with_store
@json_option
def unhide(run_id: str, as_json: bool) -> None:
    """Show a hidden run in queries and lists again."""
    _report(state().client().runs.set_hidden(run_id, False), as_json)


# -- files ----------------------------------------------------------------------------------------


def _source_files(r: Run) -> list[tuple[str, int]]:
    """The objects of an imported run's folder, left where `run import` found them."""
    assert r.source is not None
    source = _open_source(r.source.uri)
    try:
        return [(i.key, i.size) for i in source.list("")]
    finally:
        source.close()


@run.command("files")
@run_id_argument
@with_store
@json_option
def files(run_id: str, as_json: bool) -> None:
    """The files of a run: output , path , size (imported runs: the files of their folder)."""
    client = state().client()
    r = client.runs.get(run_id)
    rows: list[tuple[str, str, int]] = []
    if r.source is not None and r.source.kind == SOURCE_IMPORT:
        rows = [("source", key, size) for key, size in _source_files(r)]
    for link in r.outputs:
        bundle = client.get_bundle(link.repo, link.bundle)
        rows += [(link.name, e.path, e.size) for e in client.list_files(bundle) if e.kind == "f"]
    if as_json:
        print_json([{"output": o, "path": p, "size": s} for o, p, s in rows])
        return
    for output, path, size in rows:
        click.echo(f"{output} , {path} , {size}")


CHUNK = 8 << 20


@run.command("download")
@run_id_argument
@click.option("--destination", required=True, type=click.Path(), help="Folder to download into.")
@click.option("--force", is_flag=True, help="Write into a non-empty destination.")
@with_store
def download(run_id: str, destination: str, force: bool) -> None:
    """Download a run's files: one output into DESTINATION, several into DESTINATION/<output>."""
    client = state().client()
    r = client.runs.get(run_id)
    dest = Path(destination)
    targets: list[tuple[BundleLink, Path]] = [
        (link, dest if len(r.outputs) == 1 else dest / link.name) for link in r.outputs
    ]
    imported = r.source is not None and r.source.kind == SOURCE_IMPORT
    if not targets and not imported:
        raise NotFoundError(f"run `{run_id}` has no output bundles and no imported folder: nothing to download")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UsageError(f"destination `{dest}` is not empty; pass --force to write into it")
    for link, target in targets:
        bundle = client.get_bundle(link.repo, link.bundle)
        with progress_bar(f"downloading {link.name}") as bar:
            client.download(bundle, target, force=True, progress=bar)
    if imported:
        assert r.source is not None
        count = _copy_source(r.source.uri, dest)
        info(f"copied {count} files from `{r.source.uri}`")
    info(f"run {run_id}: downloaded into {dest}")


def _copy_source(uri: str, dest: Path) -> int:
    count = 0
    source = _open_source(uri)
    try:
        for item in source.list(""):
            validate_relpath(item.key)  # a hostile key must not write outside the destination
            target = dest / item.key
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with target.open("wb") as out:
                    offset = 0
                    while offset < item.size or offset == 0:
                        piece = source.get_range(item.key, offset, CHUNK)
                        if not piece:
                            break
                        out.write(piece)
                        offset += len(piece)
            except OSError as err:
                raise LocalIOError(f"cannot write `{target}`: {err.strerror}") from None
            count += 1
    finally:
        source.close()
    return count
