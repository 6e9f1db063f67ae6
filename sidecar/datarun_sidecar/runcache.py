"""The run cache in a webhook-injected pod (an Argo step): the fuse sidecar's half (FORMAT.md §15.3).

The webhook hands the fuse sidecar a plan (``DATARUN_CACHE_PLAN``, :class:`datarun.cache.CachePlan`):
what the key is made of, except the inputs' content, which is only known once the sidecar has
pinned them. So the key is computed here, after pinning and before anything is mounted.

- A hit: the earlier run's outputs are downloaded where the app would have written them, the output
  labels move to them, a ``Cached`` run record links the earlier run, and the ``skip`` marker tells
  ``wrap_application.sh`` not to start the app (sidecar/PROTOCOL.md). The result names the reused
  bundles.
- A miss: the pod runs as it always did; once the sidecar's run record is written, the key is
  stamped on it and the run is entered in the cache (if it succeeded and the image is pinned).

A store that cannot answer the lookup is a miss, as in the operator: running is always safe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datarun.cache import ENV_CACHE_PLAN, REFRESH, USE, CacheKey, CachePlan
from datarun.errors import DatarunError
from datarun.model import Bundle
from datarun.repo import Client
from datarun.runs import CACHED, BundleLink, CacheStamp, Run, now_iso
from datarun_sidecar.protocol import OutputResult, SidecarError, SidecarResult, write_atomic

SKIP_MARKER = "skip"
"""``<coord>/fuse/skip``, written before ``ready``: line 1 is the reason the wrapper prints, line 2
the earlier run and the reused bundles as JSON."""


@dataclass(frozen=True, slots=True)
class CacheHit:
    run: str  # the Cached record written for this pod
    cached_from: Run  # the earlier run whose outputs it reuses
    reason: str


def log(message: str) -> None:
    print(f"datarun-sidecar: cache: {message}", file=sys.stderr)


def lookup(client: Client, key: CacheKey) -> Run | None:
    """The earlier run to reuse, or None (a miss, with the reason on stderr)."""
    try:
        cache = client.cache
        if cache.may_be_invalidated():
            from datarun.lineage import invalidation_check  # only then: it costs start-up time

            cache = cache.checking(invalidation_check(client.meta, client.cache_dir))
        found = cache.lookup(key)
    except DatarunError as err:
        log(f"miss: the store could not answer the lookup ({err}); running the app")
        return None
    for run_id, reason in found.rejected:
        log(f"run {run_id} not reused: {reason}")
    if found.hit is None:
        log(f"miss: {found.reason or 'no earlier run qualifies'}")
    return found.hit


def reuse(
    client: Client,
    coord_own: Path,
    plan: CachePlan,
    key: CacheKey,
    hit: Run,
    folders: Sequence[str],
    inputs: Sequence[BundleLink],
    title: str,
) -> CacheHit:
    """Materialise a hit: the earlier outputs in ``folders`` (the upload folders, in plan order),
    then the labels, then the Cached record, then the skip marker. Labels move only once every
    output is in place, so a failed download leaves the labels where they were."""
    earlier = {o.name: o for o in hit.outputs}
    for out, folder in zip(plan.outputs, folders, strict=True):
        link = earlier[out.name]  # the lookup checked that every declared output exists
        target = Path(folder)
        if target.exists():
            shutil.rmtree(target)  # what the image left there is not what the earlier run wrote
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
            title=title,
            phase=CACHED,
            exit_code=0,
            params=dict(plan.params),
            command=plan.command,
            image=plan.image,
            inputs=tuple(inputs),
            outputs=hit.outputs,
            annotations={"datarun.io/sidecar": "fuse"},
            cache=key.stamp(plan.policy, hit.id),
        )
    )
    reason = f"cache hit: run {record.id} reuses the outputs of run {hit.id}; the app is not started"
    details = {"run": record.id, "cachedFrom": hit.id, "key": key.key, "outputs": [o.to_json() for o in hit.outputs]}
    write_atomic(coord_own / SKIP_MARKER, reason + "\n" + json.dumps(details, separators=(",", ":")) + "\n")
    return CacheHit(record.id, hit, reason)


class PodCache:
    """The fuse sidecar's run cache state: the plan (read when the inputs are pinned, so that a bad
    plan fails the sidecar before the app starts), the key, and the hit, if there was one."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.env = env
        self.plan: CachePlan | None = None
        self.key: CacheKey | None = None
        self.hit: CacheHit | None = None
        self.folders: tuple[str, ...] = ()

    def output_name(self, index: int, default: str) -> str:
        """The name of the ``index``-th upload: the plan's (the key's) when there is a plan."""
        return self.plan.outputs[index].name if self.plan is not None else default

    def before_mount(
        self,
        client: Client,
        coord_own: Path,
        pinned: Sequence[Bundle],
        folders: Sequence[str],
        inputs: Sequence[BundleLink],
    ) -> bool:
        """True on a hit: the outputs are in place and the skip marker is written; mount nothing."""
        raw = self.env.get(ENV_CACHE_PLAN, "")
        if not raw:
            return False
        try:
            plan = CachePlan.from_json(raw)
            if len(folders) != len(plan.outputs):
                raise SidecarError(
                    f"{ENV_CACHE_PLAN}: names {len(plan.outputs)} output(s) but the pod uploads {len(folders)}"
                )
            key = plan.key([b.manifest for b in pinned])
        except DatarunError as err:
            raise SidecarError(str(err)) from None
        self.plan, self.key, self.folders = plan, key, tuple(folders)
        if plan.policy != USE:
            log(f"policy {plan.policy}: not looked up")
            return False
        hit = lookup(client, key)
        if hit is None:
            return False
        title = self.env.get("DATARUN_RUN_ID", "") or "fuse sidecar"
        try:
            self.hit = reuse(client, coord_own, plan, key, hit, folders, inputs, title)
        except DatarunError as err:
            # The labels have not moved (they move last); the pod fails rather than run on a half-written folder.
            raise SidecarError(f"cache hit on run {hit.id}, but its outputs could not be put in place: {err}") from None
        log(self.hit.reason)
        return True

    def stamp(self) -> CacheStamp | None:
        """The stamp the sidecar's run record is created with: after a miss or under ``refresh``."""
        if self.plan is None or self.key is None or self.hit is not None or self.plan.policy not in (USE, REFRESH):
            return None
        return self.key.stamp(self.plan.policy)

    def after_record(self, client: Client, result: SidecarResult, run: Run | None) -> None:
        """On a hit, the result names the reused bundles and the Cached record; after a miss (or
        ``refresh``) whose run record was written with the stamp, the run is entered."""
        if self.plan is None or self.key is None:
            return
        if self.hit is not None:
            reused = {o.name: o for o in self.hit.cached_from.outputs}
            result.outputs = [
                OutputResult(
                    name=o.name,
                    repo=o.repo,
                    path=folder,
                    label=o.label,
                    bundle=reused[o.name].bundle,
                    skipped_reason=f"cache hit: the output of run {self.hit.cached_from.id}",
                )
                for o, folder in zip(self.plan.outputs, self.folders, strict=True)
            ]
            result.run = self.hit.run
            return
        if run is None or run.cache is None:
            return
        try:
            reason = client.cache.record(run, self.key)
        except DatarunError as err:
            reason = f"the cache entry was not written: {err}"
        log(f"run {run.id} entered" if not reason else f"run {run.id} not entered: {reason}")
