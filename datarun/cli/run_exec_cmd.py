"""`datarun run exec` and `datarun run explain-cache`: luisy's verbs on the run cache.

`run exec` runs a command locally with a DataRun's semantics: it pins its inputs (a label is
resolved to one bundle before anything runs), computes the cache key, and on a hit downloads the
earlier run's outputs instead of running (luisy `--download`). On a miss it downloads the
inputs, runs the command, uploads the outputs, and writes the run record and the cache entry.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from datarun.cache import OFF, POLICIES, USE, CacheKey, InputSpec, KeySpec, OutputSpec, compute_key, tree_hash
from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.errors import ConflictError, LocalIOError, NotFoundError, RunFailedError, UsageError
from datarun.ids import is_ksuid
from datarun.model import BundleRef, RunRecord, validate_label_name, validate_relpath, validate_repo_name
from datarun.runs import CACHED, FAILED, SUCCEEDED, BundleLink, Run, now_iso
from datarun.runs.exekias import parse_params

if TYPE_CHECKING:
    from datarun.repo import Client
    from datarun.runs import RunStore

RUNNER_VERSION = "run-exec/1"
"""Part of the key (`versions.runner`): bump it if how `run exec` presents inputs to the command
changes, since the same command could then compute something else."""

_NAME_HINT = "a name of letters, digits and underscores, such as `data`"


@dataclass(frozen=True, slots=True)
class InputArg:
    name: str
    repo: str
    ref: str  # a label, or a bundle id
    path: str


@dataclass(frozen=True, slots=True)
class OutputArg:
    name: str
    repo: str
    path: str
    label: str | None


def _name(text: str, flag: str, spelled: str) -> str:
    if not text or not all(c.isalnum() or c == "_" for c in text):
        raise UsageError(f"{flag} `{spelled}`: `{text}` is not {_NAME_HINT}")
    return text


def parse_input(text: str) -> InputArg:
    name, eq, rest = text.partition("=")
    repo, at, ref_path = rest.partition("@")
    if not eq or not at:
        raise UsageError(f"--input `{text}` is not NAME=REPO@LABEL[:PATH], e.g. data=images@latest:train")
    ref, _, path = ref_path.partition(":")
    validate_repo_name(repo)
    if not is_ksuid(ref):
        validate_label_name(ref)
    path = path.strip("/")
    if path:
        validate_relpath(path)
    return InputArg(_name(name, "--input", text), repo, ref, path)


def parse_output(text: str) -> OutputArg:
    name, eq, rest = text.partition("=")
    fields = rest.split(":")
    if not eq or len(fields) not in (2, 3) or not fields[1]:
        raise UsageError(f"--output `{text}` is not NAME=REPO:PATH[:LABEL], e.g. model=models:out/model:latest")
    validate_repo_name(fields[0])
    label = fields[2] if len(fields) == 3 and fields[2] else None
    if label is not None:
        validate_label_name(label)
    return OutputArg(_name(name, "--output", text), fields[0], fields[1], label)


def parse_env(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name or "\0" in text:
        raise UsageError(f"--env `{text}` is not NAME=VALUE")
    return name, value


def _unique(names: list[str], flag: str) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise UsageError(f"{flag} name(s) {', '.join(sorted(seen))} given twice; give each a different name")


def _empty_or_absent(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConflictError(f"{what} `{path}` exists and is not an empty folder; remove it or use another path")


def _pin(client: Client, inputs: list[InputArg]) -> dict[str, tuple[InputArg, BundleLink, str]]:
    """Each input as one bundle (a label resolved once, now) with its manifest id."""
    pinned = {}
    for arg in inputs:
        is_id = is_ksuid(arg.ref)
        bundle = client.resolve(arg.repo, bundle=arg.ref if is_id else None, label=None if is_id else arg.ref)
        if arg.path and not any(
            e.path == arg.path or e.path.startswith(arg.path + "/") for e in client.list_files(bundle)
        ):
            raise NotFoundError(
                f"--input {arg.name}: bundle {bundle.id} of repo `{arg.repo}` has no `{arg.path}`; "
                f"see `datarun bundle list files --repo {arg.repo} --bundle {bundle.id}`"
            )
        pinned[arg.name] = (arg, BundleLink(arg.name, arg.repo, bundle.id), bundle.manifest)
    return pinned


def _env_var(prefix: str, name: str) -> str:
    return f"DATARUN_{prefix}_{name.upper()}"


@click.command("exec")
@click.option("--input", "inputs", multiple=True, metavar="NAME=REPO@LABEL[:PATH]", help="An input, pinned now.")
@click.option("--output", "outputs", multiple=True, metavar="NAME=REPO:PATH[:LABEL]", help="A folder to upload.")
@click.option("--params", "params_file", type=click.Path(), default=None, help="params.json: the run's params.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Env for the command (in the key).")
@click.option("--cache", "policy", type=click.Choice(POLICIES), default=USE, show_default=True)
@click.option("--cache-version", "salt", default="", help="A salt in the key: change it to recompute everything.")
@click.option("--code", "code_path", type=click.Path(), default=None, help="Source tree whose hash joins the key.")
@click.option("--workdir", type=click.Path(), default=".", help="Where the command runs and PATHs are relative to.")
@click.option("--title", default="", help="The run's title (default: the command).")
@click.argument("command", nargs=-1, required=True, metavar="-- CMD ARGS")
@with_store
@json_option
def exec_(
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    params_file: str | None,
    env_pairs: tuple[str, ...],
    policy: str,
    salt: str,
    code_path: str | None,
    workdir: str,
    title: str,
    command: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run CMD locally with pinned inputs, uploading its outputs; on a cache hit, download the
    earlier run's outputs instead. Inputs are in $DATARUN_INPUT_<NAME>, outputs go to
    $DATARUN_OUTPUT_<NAME>, params are in $DATARUN_PARAMS. The command's stdout goes to stderr;
    the last line of stdout is the run id."""
    # Everything that can be wrong with the arguments is checked before anything is uploaded.
    in_args = [parse_input(t) for t in inputs]
    out_args = [parse_output(t) for t in outputs]
    _unique([a.name for a in in_args], "--input")
    _unique([a.name for a in out_args], "--output")
    env = dict(parse_env(t) for t in env_pairs)
    params: dict[str, Any] = {}
    if params_file is not None:
        try:
            params = parse_params(Path(params_file).read_bytes(), params_file)
        except OSError as err:
            raise LocalIOError(f"--params `{params_file}`: {err.strerror}; pass a readable params.json") from None
    root = Path(workdir).absolute()
    if not root.is_dir():
        raise LocalIOError(f"--workdir `{root}` is not a folder")
    for out in out_args:
        validate_relpath(out.path.strip("/"))
        _empty_or_absent(root / out.path, f"--output {out.name}: the folder")
    client = state().client()
    for out in out_args:
        client.get_repo(out.repo)
    pinned = _pin(client, in_args)
    key = compute_key(
        KeySpec(
            command=command,
            env=dict(env),
            params=params,
            inputs={n: InputSpec(manifest, arg.path) for n, (arg, _, manifest) in pinned.items()},
            outputs={o.name: OutputSpec(o.repo, o.path.strip("/")) for o in out_args},
            versions={"runner": RUNNER_VERSION},
            code=tree_hash(Path(code_path)) if code_path is not None else None,
            salt=salt,
        )
    )
    runs = client.runs
    base = Run(
        id=runs.new_id(),
        start=now_iso(),
        title=title or " ".join(command)[:200],
        params=params,
        command=command,
        inputs=tuple(link for _, link, _ in pinned.values()),
        cache=key.stamp(policy),
    )
    if policy == USE:
        cache = client.cache
        if client.cache.may_be_invalidated():
            # Imported only then: lineage's graph and index cost ~0.1 s of a hit's start-up.
            from datarun.lineage import invalidation_check

            cache = cache.checking(invalidation_check(client.meta, client.cache_dir))
        found = cache.lookup(key)
        for run_id, reason in found.rejected:
            info(f"cache: run {run_id} not reused: {reason}")
        if found.hit is not None:
            done = _reuse(client, runs, base, found.hit, out_args, root)
            _report(done, as_json)
            return
        info(f"cache miss: {found.reason}" if found.reason else "cache miss")
    done = _execute(client, runs, base, key, pinned, out_args, root, env, params, policy)
    _report(done, as_json)


def _report(done: Run, as_json: bool) -> None:
    if as_json:
        print_json(done.to_json())
    click.echo(done.id)


def _reuse(client: Client, runs: RunStore, base: Run, hit: Run, out_args: list[OutputArg], root: Path) -> Run:
    """A hit: the earlier outputs downloaded where the command would have written them, labels
    moved as asked, and a Cached run linking the earlier one."""
    assert base.cache is not None
    earlier = {o.name: o for o in hit.outputs}
    for out in out_args:
        link = earlier[out.name]
        client.download(client.get_bundle(link.repo, link.bundle), root / out.path, force=True)
        if out.label is not None:
            client.set_label(out.repo, out.label, link.bundle, retries=5)
    info(f"cache hit: reused the outputs of run {hit.id}")
    cached = replace(
        base,
        phase=CACHED,
        exit_code=0,
        end=now_iso(),
        outputs=hit.outputs,
        cache=replace(base.cache, cached_from=hit.id),
    )
    return runs.create(cached)


def _execute(
    client: Client,
    runs: RunStore,
    base: Run,
    key: CacheKey,
    pinned: dict[str, tuple[InputArg, BundleLink, str]],
    out_args: list[OutputArg],
    root: Path,
    env: dict[str, str],
    params: dict[str, Any],
    policy: str,
) -> Run:
    run = runs.create(base)
    try:
        with tempfile.TemporaryDirectory(prefix="datarun-exec-") as scratch:
            child_env = {**os.environ, **env, "DATARUN_RUN_ID": run.id}
            for name, (arg, link, _) in pinned.items():
                dest = Path(scratch) / "inputs" / name
                client.download(client.get_bundle(link.repo, link.bundle), dest)
                child_env[_env_var("INPUT", name)] = str(dest / arg.path) if arg.path else str(dest)
            params_path = Path(scratch) / "params.json"
            params_path.write_bytes(orjson.dumps(params))
            child_env["DATARUN_PARAMS"] = str(params_path)
            for out in out_args:
                child_env[_env_var("OUTPUT", out.name)] = str(root / out.path)
            try:
                # stdout=2: the command's output must not mix with ours (the run id).
                child = subprocess.run(list(base.command), cwd=root, env=child_env, stdout=2, check=False)
                code = child.returncode
            except OSError as err:
                raise LocalIOError(f"cannot start `{base.command[0]}`: {err.strerror}; check the command") from None
    except BaseException:
        runs.finish(run.id, FAILED, None)
        raise
    if code != 0:
        runs.finish(run.id, FAILED, code)
        raise RunFailedError(f"run {run.id}: `{base.command[0]}` exited with {code}; nothing was uploaded")
    missing = [o.name for o in out_args if not (root / o.path).is_dir()]
    if missing:
        runs.update(run.id, lambda r: r.with_annotations({"datarun.missing-outputs": ",".join(missing)}))
        runs.finish(run.id, FAILED, code)
        raise RunFailedError(
            f"run {run.id}: the command exited 0 but did not write the declared output folder(s) "
            f"{', '.join(f'`{o.path}`' for o in out_args if o.name in missing)}; nothing was uploaded"
        )
    links = []
    transfers = {}
    refs = tuple(BundleRef(link.repo, link.bundle) for _, link, _ in pinned.values())
    record = RunRecord(run_id=run.id, command=base.command, exit_code=0, params=params)
    try:
        for out in out_args:
            result = client.upload(
                out.repo, root / out.path, f"run {run.id}: {out.name}", label=out.label, inputs=refs, run=record
            )
            links.append(BundleLink(out.name, out.repo, result.bundle.id))
            transfers[out.name] = result.summary
    except BaseException:
        runs.finish(run.id, FAILED, code, tuple(links), transfers=transfers)
        raise
    done = runs.finish(run.id, SUCCEEDED, 0, tuple(links), transfers=transfers)
    if policy != OFF:
        reason = client.cache.record(done, key)
        info(f"cache: run {done.id} recorded" if not reason else f"cache: run {done.id} not recorded: {reason}")
    return done


@click.command("explain-cache")
@click.option("--run", "run_id", required=True, metavar="ID", help="The run to explain.")
@with_store
@json_option
def explain_cache(run_id: str, as_json: bool) -> None:
    """The run's cache key and its parts; for a miss, the nearest earlier run of the same task
    and which parts differed."""
    client = state().client()
    explained = client.cache.explain(client.runs.get(run_id))
    if as_json:
        print_json(explained.to_json())
        return
    click.echo(f"run     {explained.run}")
    click.echo(f"key     {explained.key}")
    for name, value in explained.parts.items():
        click.echo(f"  {name:<10} {orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()}")
    if explained.cached_from is not None:
        click.echo(f"hit     reused the outputs of run {explained.cached_from}")
    elif explained.nearest is None:
        click.echo("miss    no earlier run of this task is in the cache")
    elif not explained.differs:
        click.echo(f"miss    nearest earlier run {explained.nearest} has the same key (it did not qualify then)")
    else:
        click.echo(f"miss    nearest earlier run {explained.nearest} differs in: {', '.join(explained.differs)}")


COMMANDS = (exec_, explain_cache)
