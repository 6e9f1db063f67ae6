"""Shared CLI plumbing: the state object, ``--store`` on every command, output helpers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

if TYPE_CHECKING:
    from datarun.repo import Client

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    store: str | None = None
    blob_store: str | None = None
    quiet: bool = False
    debug: bool = False
    workers: int = 4
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            from datarun.repo import connect

            self._client = connect(self.store, blob_store=self.blob_store, workers=self.workers)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def state() -> CliState:
    ctx = click.get_current_context()
    found = ctx.find_object(CliState)
    if found is None:
        found = ctx.ensure_object(CliState)
    return found


def _set_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(CliState).store = value


store_option = click.option(
    "--store",
    metavar="URL",
    expose_value=False,
    callback=_set_store,
    help="Store URL (file:///path). Overrides DATARUN_STORE and the config file.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def with_store(fn: F) -> F:
    return store_option(fn)


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def info(message: str) -> None:
    """Human-oriented chatter goes to stderr so stdout stays parseable."""
    if not state().quiet:
        click.echo(message, err=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""
    if state().quiet or not sys.stderr.isatty():
        from datarun.progress import NO_PROGRESS

        yield NO_PROGRESS
        return
    from datarun.cli.progress import RichProgress

    with RichProgress(description, total) as bar:
        yield bar
