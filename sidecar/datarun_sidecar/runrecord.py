"""The run record a sidecar writes when it has uploaded (datarun.runs, through ``Client.runs``).

In a DataRun's pod the operator created the run at pin time and names it in
``DATARUN_RUN_RECORD``; the sidecar then adds its output bundles to that run, so the fuse and the
postgres sidecar of one pod (racing each other) and the operator's end-of-run update all land in
one record, each as its own version (a pod given that id but run without the operator makes the
record under it). Anywhere else (an Argo step injected by the webhook, a
sidecar run by hand) there is no such run, and the sidecar creates one for its uploads.

Writing the record never fails the pod: the bundles are uploaded and their provenance names the
run either way; a record that could not be written is reported on stderr and in the result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from datarun.errors import ConflictError, DatarunError, NotFoundError
from datarun.repo import Client
from datarun.runs import FAILED, SUCCEEDED, BundleLink, CacheStamp, Run, iso

if TYPE_CHECKING:  # the lifecycle in protocol.py calls record_run: a runtime import would be a cycle
    from datarun_sidecar.protocol import SidecarResult

RUN_RECORD_ENV = "DATARUN_RUN_RECORD"


def _outputs(result: SidecarResult) -> tuple[BundleLink, ...]:
    return tuple(BundleLink(o.name, o.repo, o.bundle) for o in result.outputs if o.uploaded and o.bundle)


def record_run(
    client: Client,
    result: SidecarResult,
    *,
    started: float,
    inputs: Sequence[BundleLink],
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    cache: CacheStamp | None = None,
) -> Run | None:
    """Write (or extend) the run of these uploads; return it, None if it was not written. ``cache``
    is the run cache's stamp of a run this sidecar creates (a webhook-injected pod's, see runcache.py)."""
    env = os.environ if env is None else env
    if not any(o.repo for o in result.outputs):
        return None  # nothing was meant to be uploaded (a database without an output repo)
    outputs = _outputs(result)
    transfers = {o.name: result.transfers[o.name] for o in outputs if o.name in result.transfers}
    ok = result.ok and result.app_exit_code == 0
    own = Run(
        id="",
        start=iso(datetime.fromtimestamp(started, UTC)),
        title=env.get("DATARUN_RUN_ID", "") or f"{result.kind} sidecar",
        phase=SUCCEEDED if ok else FAILED,
        exit_code=result.app_exit_code,
        end=iso(datetime.now(UTC)),
        command=tuple(command),
        image=env.get("DATARUN_IMAGE", ""),
        inputs=tuple(inputs),
        outputs=outputs,
        transfers=transfers,
        annotations={"datarun.io/sidecar": result.kind},
        cache=cache,
    )
    try:
        runs = client.runs
        existing = env.get(RUN_RECORD_ENV, "")
        if not existing:
            run = runs.create(replace(own, id=runs.new_id()))
        else:
            try:
                run = runs.update(existing, lambda r: r.with_outputs(outputs, transfers))
            except NotFoundError:
                # No operator wrote it (a DataRun pod run without one, e.g. by podman): the record
                # is made here under the id the pod was given, and the other sidecar's outputs join it.
                try:
                    run = runs.create(replace(own, id=existing))
                except ConflictError:  # the other sidecar made it first
                    run = runs.update(existing, lambda r: r.with_outputs(outputs, transfers))
    except DatarunError as err:
        print(f"datarun-sidecar: the run record was not written: {err}", file=sys.stderr)
        result.run_error = str(err)
        return None
    result.run = run.id
    return run
