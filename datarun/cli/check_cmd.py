"""`datarun check [--read-data [--sample P]] [--repair]`."""

from __future__ import annotations

import logging

import click

from datarun.cli.common import info, json_option, print_json, state, with_store
from datarun.errors import IntegrityError
from datarun.gc.check import check_store

log = logging.getLogger("datarun.check")


@click.command("check")
@click.option("--read-data", is_flag=True, help="Also read every live chunk and check its hash.")
@click.option(
    "--sample",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="With --read-data, the share of packs to read (chosen at random).",
)
@click.option(
    "--repair", is_flag=True, help="Rebuild missing or corrupt index segments and the local caches; never deletes."
)
@with_store
@json_option
def check(read_data: bool, sample: float, repair: bool, as_json: bool) -> None:
    """Verify the store: records, manifests, index segments, packs (and with --read-data, bytes).

    Exits 5 if anything is wrong, naming every object at fault.
    """
    client = state().client()
    report = check_store(
        client.meta,
        client.blobs,
        read_data=read_data,
        sample=sample,
        repair=repair,
        cache_dir=client.cache_dir,
        workers=client.workers * 2,
        log=info,
    )
    log.info("check finished", extra={"event": "check", "fields": report.to_json()})
    if as_json:
        print_json(report.to_json())
    else:
        for p in report.problems:
            click.echo(f"{p.kind}: {p.message}")
        for r in report.repaired:
            click.echo(f"repaired: {r}")
        click.echo(
            f"checked {report.records} records, {report.manifests} manifests, {report.segments} index segments, "
            f"{report.packs} packs"
            + (f", read {report.chunks_read} chunks" if read_data else "")
            + f": {len(report.problems)} problems"
        )
    if report.problems:
        raise IntegrityError(f"check found {len(report.problems)} problems in `{client.meta.url}` (listed above)")
