"""Entry point: the root group, global flags, and the single abort path for errors.

Expected failures (DatarunError) print one line, ``error: ...``, and exit with the code from
:class:`datarun.errors.ExitCode`. Anything else is a bug: one line plus a hint, and the
traceback only with ``--debug`` or ``DATARUN_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import traceback
from types import FrameType

import click

from datarun import __version__
from datarun.cli.bundle_cmd import bundle
from datarun.cli.common import CliState, store_option
from datarun.cli.config_cmd import config
from datarun.cli.datamover_cmd import datamover
from datarun.cli.gc_cmd import bundle_delete, repo_delete, repo_rename
from datarun.cli.label_cmd import label
from datarun.cli.quickstart_cmd import quickstart
from datarun.cli.repo_cmd import repo
from datarun.errors import DatarunError, ExitCode


def _run_group() -> click.Command:
    from datarun.cli.run_cmd import run
    from datarun.cli.run_exec_cmd import COMMANDS
    from datarun.cli.run_query_cmd import compact, list_runs, query

    for command in (query, list_runs, compact, *COMMANDS):
        run.add_command(command)
    return run


# Command groups that `bundle upload` and the other data-moving commands never need are imported
# only when their name is asked for: each costs imports (the run index, lineage, the web view, gc)
# that would otherwise be paid by every CLI start, and a no-change re-upload is mostly CLI start.
_LAZY: dict[str, tuple[str, str]] = {
    "run": ("", ""),
    "lineage": ("datarun.cli.lineage_cmd", "lineage"),
    "record": ("datarun.cli.lineage_cmd", "record"),
    "action": ("datarun.cli.invalidate_cmd", "action"),
    "invalidate": ("datarun.cli.invalidate_cmd", "invalidate_cmd"),
    "revalidate": ("datarun.cli.invalidate_cmd", "revalidate_cmd"),
    "web": ("datarun.cli.web_cmd", "web"),
    "gc": ("datarun.cli.gc_cmd", "gc"),
    "check": ("datarun.cli.check_cmd", "check"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, attr = _LAZY[cmd_name]
            command = _run_group() if cmd_name == "run" else getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@store_option
@click.option("--blob-store", metavar="URL", help="Separate store for chunk data (datamon's blob/metadata split).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries on stderr.")
@click.option("--debug", is_flag=True, envvar="DATARUN_DEBUG", help="Show tracebacks for unexpected errors.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel transfers.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="DATARUN_LOG_FORMAT",
    show_default=True,
    help="json: log lines (and transfer, gc and check summaries) as one JSON object per line on stderr.",
)
@click.version_option(__version__, prog_name="datarun")
@click.pass_context
def cli(ctx: click.Context, blob_store: str | None, quiet: bool, debug: bool, workers: int, log_format: str) -> None:
    """Versioned, deduplicated bundles of data: upload, label, download, diff, verify.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 not found, 4 conflict, 5 integrity,
    6 store error, 7 local file error, 130 interrupted.
    """
    state = ctx.ensure_object(CliState)
    state.blob_store = blob_store
    state.quiet = quiet
    state.debug = debug
    state.workers = workers
    ctx.call_on_close(state.close)
    if log_format == "json":
        from datarun.summary import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")


cli.add_command(config)
cli.add_command(repo)
cli.add_command(bundle)
cli.add_command(label)
cli.add_command(quickstart)
cli.add_command(datamover)
bundle.add_command(bundle_delete)
repo.add_command(repo_delete)
repo.add_command(repo_rename)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C: spooled packs removed, nothing visible.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    debug = os.environ.get("DATARUN_DEBUG") == "1" or "--debug" in (argv if argv is not None else sys.argv)
    try:
        cli.main(args=argv, prog_name="datarun", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as err:
        err.show()
        return ExitCode.USAGE
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except DatarunError as err:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {err}", err=True)
        return int(err.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted; nothing half-written became visible", err=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as err:  # a bug: keep the message, hide the traceback unless asked
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error: {type(err).__name__}: {err} (rerun with --debug for details)", err=True)
        return ExitCode.INTERNAL
    return ExitCode.OK


def _without_the_azure_sdks_aiohttp_transport() -> None:
    """The CLI talks to Azure through the SDK's synchronous transport only. When aiohttp is
    installed (kopf brings it), importing `azure.storage.blob` still imports the SDK's aiohttp
    transport, only to test a type in its retry policy: 110 ms of every Azure command here
    (`import datarun.store.azure`, median of 9: 298 -> 188 ms). Marked absent, the SDK takes
    the path it takes where aiohttp is not installed. Done here, in the CLI's own process, and
    not in the library, where the host program may use the SDK's asyncio clients."""
    sys.modules.setdefault("azure.core.pipeline.transport._aiohttp", None)  # type: ignore[arg-type]


def run() -> None:
    _without_the_azure_sdks_aiohttp_transport()
    sys.exit(main())


if __name__ == "__main__":
    run()
