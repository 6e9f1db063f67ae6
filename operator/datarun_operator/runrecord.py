"""A DataRun's run record (datarun.runs), as pure functions: its id, what is written at pin time,
and what the end of the run changes. The handlers do the writing.

The id is derived from the DataRun's uid and creation time (time-sortable like every run id), so
the builder can hand it to the sidecars (``DATARUN_RUN_RECORD``) and a retried or restarted
create handler finds the record it wrote before instead of making a second one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from datarun.cache import CacheKey, InputSpec, KeySpec, OutputSpec, SecretRef, canonical, compute_key
from datarun.runs import CACHED, FAILED, RUNNING, SUCCEEDED, BundleLink, CacheStamp, Run, iso, stable_run_id
from datarun_operator.models import CachePolicy, DataRun, DataRunStatus, Phase, parse_status
from datarun_operator.schema import dump

_NO_TIME = 1_400_000_000.0  # the KSUID epoch: only for bodies without a creationTimestamp (tests)


def record_id(run: DataRun) -> str:
    when = _NO_TIME
    if run.created:
        when = dt.datetime.fromisoformat(run.created.replace("Z", "+00:00")).timestamp()
    return stable_run_id(when, f"datarun.io/{run.uid}")


def cache_policy(run: DataRun) -> CachePolicy:
    return run.spec.cache.policy if run.spec.cache is not None else CachePolicy.USE


def cache_key(
    run: DataRun, manifests: Mapping[str, str], versions: Mapping[str, str], image_digest: str | None = None
) -> CacheKey:
    """The run cache key of a DataRun (FORMAT.md §15), from its spec and the manifest id of each
    pinned input and database source. ``image_digest`` is the kubelet's imageID, when known.

    An env value from a Secret is keyed by its name and key; any other ``valueFrom`` (a
    ConfigMap, a field of the pod) by its canonical JSON, since only the reference is known here.
    """
    spec = run.spec
    env: dict[str, str | SecretRef] = {}
    for var in spec.env:
        ref = (var.value_from or {}).get("secretKeyRef")
        if isinstance(ref, dict):
            env[var.name] = SecretRef(str(ref.get("name", "")), str(ref.get("key", "")))
        elif var.value_from is not None:
            env[var.name] = "valueFrom " + canonical(var.value_from).decode()
        else:
            env[var.name] = var.value or ""
    cache = spec.cache
    key = compute_key(
        KeySpec(
            command=(*spec.command, *spec.args),
            image=spec.image,
            image_digest=image_digest,
            trust_tags=cache.trust_tags if cache is not None else False,
            env=env,
            params=dict(spec.params),
            inputs={i.name: InputSpec(manifests[i.name], i.path) for i in spec.inputs},
            outputs={o.name: OutputSpec(o.repo, o.path) for o in spec.outputs},
            databases=tuple(f"{d.name}:{d.port}:{manifests.get(d.name, '')}" for d in spec.databases),
            versions=dict(versions),
            salt=cache.version if cache is not None else "",
        )
    )
    dumping = [d.name for d in spec.databases if d.output_repo]
    if dumping:
        # A hit reuses spec.outputs only; the dump a database uploads is not among them.
        why = f"database(s) {', '.join(dumping)} upload a dump (outputRepo), which a cache hit cannot reuse"
        return replace(key, uncacheable=why)
    return key


def stamp_of(key: CacheKey, policy: CachePolicy, cached_from: str | None = None) -> CacheStamp:
    return CacheStamp(key.key, int(key.parts["schema"]), key.parts, policy.value, cached_from)


def cached_record(run: DataRun, pinned: Mapping[str, str], when: str, key: CacheKey, hit: Run) -> Run:
    """The record of a DataRun answered from the cache: phase Cached, the earlier run's outputs,
    and ``cache.cached_from`` linking that run."""
    started = started_record(run, pinned, when, key)
    return replace(
        started,
        phase=CACHED,
        exit_code=0,
        end=started.start,
        outputs=hit.outputs,
        image_digest=hit.image_digest,
        cache=stamp_of(key, cache_policy(run), hit.id),
    )


def started_record(run: DataRun, pinned: Mapping[str, str], when: str, key: CacheKey | None = None) -> Run:
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
        cache=stamp_of(key, cache_policy(run)) if key is not None else None,
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
