"""A DataRun's run record (datarun.runs), as pure functions: its id, what is written at pin time,
and what the end of the run changes. The handlers do the writing.

The id is derived from the DataRun's uid and creation time (time-sortable like every run id), so
the builder can hand it to the sidecars (``DATARUN_RUN_RECORD``) and a retried or restarted
create handler finds the record it wrote before instead of making a second one.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from datarun.cache import CacheKey, InputSpec, KeySpec, OutputSpec, SecretRef, canonical, compute_key
from datarun.ids import is_ksuid
from datarun.runs import CACHED, FAILED, RUNNING, SUCCEEDED, BundleLink, CacheStamp, Run, iso, stable_run_id
from datarun_operator.models import CachePolicy, DataRun, DataRunStatus, Phase, parse_status
from datarun_operator.schema import dump

_NO_TIME = 1_400_000_000.0  # the KSUID epoch: only for bodies without a creationTimestamp (tests)

LABEL_RERUN_OF = "datarun.io/rerun-of"  # on a rerun: the uid of the DataRun it re-creates
LABEL_RERUN_OF_RUN = "datarun.io/rerun-of-run"  # on a rerun: the run record it re-does (a label to find it)
ANNOTATION_RERUN_OF_RUN = "datarun.io/rerun-of-run"  # the same, where people read it

# Annotations that are bookkeeping, not the user's: kopf's progress and diff base (our prefix),
# and kubectl's copy of the whole applied object, which may hold anything the user once applied.
_DROPPED_ANNOTATIONS = ("datarun.io/", "kopf.zalando.org/", "kubectl.kubernetes.io/last-applied-configuration")


def _record_id(created: str, uid: str) -> str:
    when = _NO_TIME
    if created:
        when = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    return stable_run_id(when, f"datarun.io/{uid}")


def record_id(run: DataRun) -> str:
    return _record_id(run.created, run.uid)


def record_id_of(raw: Mapping[str, Any]) -> str:
    """The run record id of a DataRun body (e.g. one the apiserver just created)."""
    meta = raw.get("metadata") or {}
    return _record_id(str(meta.get("creationTimestamp") or ""), str(meta.get("uid", "")))


def recorded_resource(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The DataRun as applied, for the run record: identity, the user's labels and annotations,
    and the spec. A spec names Secrets only by reference (``credentialsSecret``, ``secretKeyRef``)
    and the operator never reads their values, so none can land here; no status, uid or
    managedFields either (a rerun gets its own)."""
    meta = raw.get("metadata") or {}
    given = (meta.get("annotations") or {}).items()
    annotations = {str(k): str(v) for k, v in given if not str(k).startswith(_DROPPED_ANNOTATIONS)}
    return {
        "apiVersion": str(raw.get("apiVersion", "")),
        "kind": str(raw.get("kind", "DataRun")),
        "metadata": {
            "name": str(meta.get("name", "")),
            "namespace": str(meta.get("namespace", "")),
            "labels": {str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            "annotations": annotations,
        },
        "spec": copy.deepcopy(dict(raw.get("spec") or {})),
    }


def rerun_of(raw: Mapping[str, Any]) -> str | None:
    """The run this DataRun re-does, from its ``datarun.io/rerun-of-run`` annotation."""
    value = ((raw.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_RERUN_OF_RUN)
    return str(value) if value and is_ksuid(str(value)) else None


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
    return key.stamp(policy.value, cached_from)


def cached_record(
    run: DataRun, pinned: Mapping[str, str], when: str, key: CacheKey, hit: Run, raw: Mapping[str, Any] | None = None
) -> Run:
    """The record of a DataRun answered from the cache: phase Cached, the earlier run's outputs,
    and ``cache.cached_from`` linking that run."""
    started = started_record(run, pinned, when, key, raw)
    return replace(
        started,
        phase=CACHED,
        exit_code=0,
        end=started.start,
        outputs=hit.outputs,
        image_digest=hit.image_digest,
        cache=stamp_of(key, cache_policy(run), hit.id),
    )


def started_record(
    run: DataRun,
    pinned: Mapping[str, str],
    when: str,
    key: CacheKey | None = None,
    raw: Mapping[str, Any] | None = None,
) -> Run:
    """Version 1, written once the inputs are pinned and before the pod exists. With the DataRun's
    body ``raw``, the record keeps the resource (so a rerun needs no live object) and ``rerun_of``."""
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
        resource=recorded_resource(raw) if raw is not None else None,
        rerun_of=rerun_of(raw) if raw is not None else None,
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
