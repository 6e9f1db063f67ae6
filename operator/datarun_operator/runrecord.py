"""A DataRun's run record (datarun.runs), as pure functions: its id, what is written at pin time,
and what the end of the run changes. The handlers do the writing.

The id is derived from the DataRun's uid and creation time (time-sortable like every run id), so
the builder can hand it to the sidecars (``DATARUN_RUN_RECORD``) and a retried or restarted
create handler finds the record it wrote before instead of making a second one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datarun.runs import FAILED, RUNNING, SUCCEEDED, BundleLink, Run, iso, stable_run_id
from datarun_operator.models import DataRun, DataRunStatus, Phase, parse_status
from datarun_operator.schema import dump

_NO_TIME = 1_400_000_000.0  # the KSUID epoch: only for bodies without a creationTimestamp (tests)


def record_id(run: DataRun) -> str:
    when = _NO_TIME
    if run.created:
        when = dt.datetime.fromisoformat(run.created.replace("Z", "+00:00")).timestamp()
    return stable_run_id(when, f"datarun.io/{run.uid}")


def started_record(run: DataRun, pinned: Mapping[str, str], when: str) -> Run:
    """Version 1, written once the inputs are pinned and before the pod exists."""
    spec = run.spec
    inputs = [BundleLink(i.name, i.repo, pinned[i.name]) for i in spec.inputs if i.name in pinned]
    inputs += [
        BundleLink(d.name, d.source_repo, pinned[d.name]) for d in spec.databases if d.source_repo and d.name in pinned
    ]
    return Run(
        id=record_id(run),
        start=iso(dt.datetime.fromisoformat(when.replace("Z", "+00:00"))),
        title=f"{run.namespace}/{run.name}",
        phase=RUNNING,
        params=dict(spec.params),
        command=(*spec.command, *spec.args),
        image=spec.image,
        inputs=tuple(inputs),
        annotations={
            "datarun.io/namespace": run.namespace,
            "datarun.io/name": run.name,
            "datarun.io/uid": run.uid,
        },
    )


@dataclass(frozen=True)
class Finish:
    """What the end of a DataRun writes into its run record."""

    phase: str
    exit_code: int | None
    outputs: tuple[BundleLink, ...]
    end: str


def finish_of(current: DataRunStatus, patch: Mapping[str, Any]) -> Finish | None:
    """The record's end if ``patch`` (a status merge patch) ends the run, else None."""
    if patch.get("phase") not in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        return None
    new = parse_status({**dump(current), **patch})
    end = new.completion_time or ""
    return Finish(
        phase=SUCCEEDED if new.phase is Phase.SUCCEEDED else FAILED,
        exit_code=new.app_exit_code,
        outputs=tuple(BundleLink(o.name, o.repo, o.bundle) for o in new.outputs if o.bundle),
        end=iso(dt.datetime.fromisoformat(end.replace("Z", "+00:00"))) if end else "",
    )
