"""The run cache in a webhook-injected pod (an Argo step): the fuse sidecar's half (FORMAT.md §15).

The webhook hands the fuse sidecar a plan (``DATARUN_CACHE_PLAN``, written by
``datarun_operator.wire.cache_plan``): what the key is made of, except the inputs' content, which
is only known once the sidecar has pinned them. So the key is computed here, after pinning and
before anything is mounted. On a hit the earlier outputs are downloaded where the app would have
written them, the output labels move, a ``Cached`` run record links the earlier run, and the
``skip`` marker tells ``wrap_application.sh`` not to start the app (sidecar/PROTOCOL.md). On a miss
the pod runs as it always did, and the run is entered in the cache once its record is written.
"""

from __future__ import annotations

import json
import shutil
import sys
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datarun.cache import REFRESH, USE, CacheKey, InputSpec, KeySpec, OutputSpec, SecretRef, compute_key
from datarun.errors import DatarunError
from datarun.model import Bundle
from datarun.repo import Client
from datarun.runs import CACHED, BundleLink, CacheStamp, Run, now_iso
from datarun_sidecar.protocol import SidecarError, write_atomic

ENV_CACHE_PLAN = "DATARUN_CACHE_PLAN"
PLAN_FORMAT = 1
SKIP_MARKER = "skip"
"""``<coord>/fuse/skip``: line 1 is the reason the wrapper prints, line 2 the hit as JSON."""


@dataclass(frozen=True, slots=True)
class PlannedCacheOutput:
    name: str
    repo: str
    path: str  # relative, as in the key (the upload folder is the fuse sidecar's own spec)
    label: str


@dataclass(frozen=True, slots=True)
class CachePlan:
    policy: str
    image: str
    trust_tags: bool
    command: tuple[str, ...]
    env: dict[str, str | SecretRef]
    params: dict[str, Any]
    inputs: tuple[tuple[str, str], ...]  # (name, path), in the order of the sidecar's mounts
    outputs: tuple[PlannedCacheOutput, ...]  # in the order of the sidecar's uploads
    versions: dict[str, str]
    salt: str


@dataclass(frozen=True, slots=True)
class CacheHit:
    run: str  # the Cached record written for this pod
    cached_from: str  # the earlier run whose outputs it reuses
    reason: str


def plan_from_env(env: Mapping[str, str]) -> CachePlan | None:
    """The plan the webhook passed, None when there is none (no cache for this pod)."""
    raw = env.get(ENV_CACHE_PLAN, "")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this sidecar reads {PLAN_FORMAT}")
        envs: dict[str, str | SecretRef] = {
            k: SecretRef(v["secret"], v["key"]) if isinstance(v, dict) else str(v) for k, v in doc["env"].items()
        }
        return CachePlan(
            policy=str(doc["policy"]),
            image=str(doc["image"]),
            trust_tags=bool(doc["trustTags"]),
            command=tuple(str(w) for w in doc["command"]),
            env=envs,
            params=dict(doc["params"]),
            inputs=tuple((str(i["name"]), str(i["path"])) for i in doc["inputs"]),
            outputs=tuple(
                PlannedCacheOutput(str(o["name"]), str(o["repo"]), str(o["path"]), str(o["label"]))
                for o in doc["outputs"]
            ),
            versions={str(k): str(v) for k, v in doc["versions"].items()},
            salt=str(doc["salt"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SidecarError(
            f"{ENV_CACHE_PLAN}: not a cache plan this sidecar can read ({err}); the webhook writes it, so "
            "the operator and sidecar images are probably of different versions"
        ) from None


def key_of(plan: CachePlan, pinned: Sequence[Bundle]) -> CacheKey:
    """The key of this pod, given its inputs pinned in the order of the plan's inputs."""
    if len(pinned) != len(plan.inputs):
        raise SidecarError(f"{ENV_CACHE_PLAN}: names {len(plan.inputs)} inputs but the pod mounts {len(pinned)}")
    return compute_key(
        KeySpec(
            command=plan.command,
            image=plan.image,
            trust_tags=plan.trust_tags,
            env=dict(plan.env),
            params=dict(plan.params),
            inputs={name: InputSpec(b.manifest, path) for (name, path), b in zip(plan.inputs, pinned, strict=True)},
            outputs={o.name: OutputSpec(o.repo, o.path) for o in plan.outputs},
            versions=dict(plan.versions),
            salt=plan.salt,
        )
    )


def stamp(plan: CachePlan, key: CacheKey, cached_from: str | None = None) -> CacheStamp:
    return CacheStamp(key.key, int(key.parts["schema"]), key.parts, plan.policy, cached_from)


def lookup(client: Client, key: CacheKey) -> Run | None:
    cache = client.cache
    if cache.may_be_invalidated():
        from datarun.lineage import invalidation_check  # only then: it costs start-up time

        cache = cache.checking(invalidation_check(client.meta, client.cache_dir))
    found = cache.lookup(key)
    for run_id, reason in found.rejected:
        print(f"datarun-sidecar: cache: run {run_id} not reused: {reason}", file=sys.stderr)
    if found.hit is None:
        print(f"datarun-sidecar: cache miss: {found.reason or 'no earlier run qualifies'}", file=sys.stderr)
    return found.hit


def reuse(
    client: Client,
    coord_own: Path,
    plan: CachePlan,
    key: CacheKey,
    hit: Run,
    folders: Sequence[str],
    inputs: Sequence[BundleLink],
    env: Mapping[str, str],
) -> CacheHit:
    """Materialise a hit: the earlier outputs in ``folders`` (the upload folders, in plan order),
    then the labels, then the Cached record, then the skip marker. Labels move only once every
    output is in place, so a failed download leaves the labels where they were."""
    earlier = {o.name: o for o in hit.outputs}
    for out, folder in zip(plan.outputs, folders, strict=True):
        link = earlier[out.name]  # the lookup checked that every declared output exists
        target = Path(folder)
        if target.exists():
            shutil.rmtree(target)  # whatever the image left there is not what the earlier run wrote
        client.download(client.get_bundle(link.repo, link.bundle), target, force=True)
    for out in plan.outputs:
        if out.label:
            client.set_label(out.repo, out.label, earlier[out.name].bundle, retries=5)
    runs = client.runs
    when = now_iso()
    record = runs.create(
        Run(
            id=runs.new_id(),
            start=when,
            end=when,
            title=env.get("DATARUN_RUN_ID", "") or "fuse sidecar",
            phase=CACHED,
            exit_code=0,
            params=dict(plan.params),
            command=plan.command,
            image=plan.image,
            inputs=tuple(inputs),
            outputs=hit.outputs,
            annotations={"datarun.io/sidecar": "fuse"},
            cache=stamp(plan, key, hit.id),
        )
    )
    reason = f"cache hit, run {record.id} reuses the outputs of run {hit.id}; the app was not started"
    details = {"run": record.id, "cachedFrom": hit.id, "key": key.key, "outputs": [o.to_json() for o in hit.outputs]}
    write_atomic(coord_own / SKIP_MARKER, reason + "\n" + json.dumps(details) + "\n")
    return CacheHit(record.id, hit.id, reason)


def check(
    client: Client,
    coord_own: Path,
    plan: CachePlan,
    pinned: Sequence[Bundle],
    folders: Sequence[str],
    inputs: Sequence[BundleLink],
    env: Mapping[str, str],
) -> tuple[CacheKey, CacheHit | None]:
    """The pod's key and, under policy ``use`` with a qualifying earlier run, the materialised hit.
    A hit that cannot be materialised is a failure of the pod (its labels have not moved)."""
    key = key_of(plan, pinned)
    if plan.policy != USE:
        return key, None
    hit = lookup(client, key)
    if hit is None:
        return key, None
    try:
        return key, reuse(client, coord_own, plan, key, hit, folders, inputs, env)
    except DatarunError as err:
        raise SidecarError(f"cache hit on run {hit.id}, but its outputs could not be put in place: {err}") from None


def record(client: Client, plan: CachePlan, key: CacheKey, run_id: str) -> str:
    """After a miss (or `refresh`) whose run record ``run_id`` was written: stamp the key on it and
    enter it in the cache if it qualifies. Returns "" or why it was not entered."""
    if plan.policy not in (USE, REFRESH) or not run_id:
        return "no run record to enter in the cache"
    try:
        run = client.runs.update(run_id, lambda r: replace(r, cache=stamp(plan, key)))
        return client.cache.record(run, key)
    except DatarunError as err:
        return f"the cache entry was not written: {err}"


class PodCache:
    """The fuse sidecar's run cache state: the plan (read when the inputs are pinned, so that a bad
    plan fails the sidecar before the app starts), the key, and the hit, if there was one."""

    def __init__(self, run_inputs: Callable[[], Sequence[BundleLink]], env: Mapping[str, str] = os.environ) -> None:
        self.run_inputs = run_inputs
        self.env = env
        self.plan: CachePlan | None = None
        self.key: CacheKey | None = None
        self.hit: CacheHit | None = None

    def before_mount(self, client: Client, coord_own: Path, pinned: Sequence[Bundle], folders: Sequence[str]) -> bool:
        """True on a hit (the outputs are in place, the skip marker written: mount nothing)."""
        self.plan = plan_from_env(self.env)
        if self.plan is None:
            return False
        if len(folders) != len(self.plan.outputs):
            raise SidecarError(
                f"{ENV_CACHE_PLAN}: names {len(self.plan.outputs)} outputs but the pod uploads {len(folders)}"
            )
        self.key, self.hit = check(client, coord_own, self.plan, pinned, folders, self.run_inputs(), self.env)
        if self.hit is not None:
            print(f"datarun-sidecar: {self.hit.reason}", file=sys.stderr)
        return self.hit is not None

    def after_record(self, client: Client, run_id: str) -> None:
        if self.plan is None or self.key is None or self.hit is not None:
            return
        reason = record(client, self.plan, self.key, run_id)
        print(
            f"datarun-sidecar: cache: run {run_id} recorded" if not reason else f"datarun-sidecar: cache: {reason}",
            file=sys.stderr,
        )
