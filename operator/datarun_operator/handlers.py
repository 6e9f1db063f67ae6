"""The kopf handlers: thin. They fetch, call the pure functions of :mod:`reconcile` and
:mod:`builder`, and send. Run with ``kopf run -m datarun_operator.handlers -A`` or
``python -m datarun_operator``.

Settings come from DATARUN_OPERATOR_* variables (:meth:`Settings.from_env`), read at import.

Lifecycle of a DataRun ``x``:

- create: validate (a bad spec fails the run with the field named, an Event, and no retry); pin
  every input label to a bundle id; write ``status.pinnedInputs`` (before the pod exists, so a
  pod never runs unpinned inputs); create pod ``x-run``, or adopt it if it exists already (a
  restarted operator, or a retried handler, never makes a second one).
- pod events (and a periodic resync, for events missed while the operator was down): the pod's
  state becomes the status (phase, outputs, timings, conditions) and Events on each transition.
- spec update after the start: refused with a Warning Event; the pod keeps the pinned spec.
- delete: the pod is deleted; kopf's finalizer is removed after that.
- admission (when the webhook is enabled): the models' validation, before anything is stored;
  and, for pods annotated ``datarun.io/inject: "true"`` (Argo steps), the sidecars, volumes, init
  container and wrapper of a DataRun pod (:mod:`datarun_operator.webhook`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import kopf

from datarun.cache import CacheKey, key_from_parts
from datarun.errors import ConflictError, DatarunError, NotFoundError, UsageError
from datarun.lineage import invalidation_check
from datarun.repo import Client, connect
from datarun.runs import SUCCEEDED, Run
from datarun_operator import metrics, reconcile, runrecord, webhook
from datarun_operator.builder import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY, get_pod, pod_name
from datarun_operator.kube import Kube, load_config
from datarun_operator.lineage_handlers import Lineage, finished
from datarun_operator.models import (
    GROUP,
    PLURAL,
    VERSION,
    CachePolicy,
    DataRun,
    Phase,
    SpecError,
    parse_status,
)
from datarun_operator.result import app_image_id
from datarun_operator.settings import Settings
from datarun_operator.wire import store_of

SETTINGS = Settings.from_env(os.environ)
FINALIZER = "datarun.io/finalizer"
logger = logging.getLogger("datarun_operator")

_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        load_config()
        _kube = Kube()
    return _kube


def _post(body: Mapping[str, Any], events: tuple[reconcile.Event, ...]) -> None:
    target = body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(body)))
    for event in events:
        kopf.event(target, type=event.type, reason=event.reason, message=event.message)


LINEAGE = Lineage(lambda: SETTINGS, kube, _post)


def _apply(namespace: str, name: str, body: Mapping[str, Any], update: reconcile.StatusUpdate) -> None:
    if update.patch:
        kube().patch_status(namespace, name, update.patch)
    _post(body, update.events)


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # Progress and the last handled spec go into annotations: the status stays ours and typed.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="datarun.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="datarun.io", key="last-handled-configuration"
    )
    # One replica (the chart's Deployment uses the Recreate strategy): no peering objects and no
    # RBAC for them; the CRD is installed by the chart, so no CRD/namespace watching either.
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.execution.max_workers = SETTINGS.workers
    if SETTINGS.webhook.enabled:
        settings.admission.server = kopf.WebhookServer(
            addr=SETTINGS.webhook.address,
            port=SETTINGS.webhook.port,
            certfile=SETTINGS.webhook.cert_file,
            pkeyfile=SETTINGS.webhook.key_file,
        )
        settings.admission.managed = None  # the chart owns the webhook configurations
    metrics.serve()
    kube()


# -- create -------------------------------------------------------------------------------------


def _pin(run: DataRun) -> dict[str, str]:
    if not reconcile.needs_pinning(run.spec, run.status.pinned_inputs):
        return dict(run.status.pinned_inputs)
    store_url, _secret = store_of(run.spec, SETTINGS)
    try:
        client = connect(store_url)
    except UsageError as err:  # a malformed or unsupported URL: retrying cannot help
        raise reconcile.PinError("spec.store.url", str(err), permanent=True) from None
    except DatarunError as err:
        raise reconcile.PinError("spec.store.url", f"cannot open the store: {err}", permanent=False) from None
    try:
        return reconcile.pin_inputs(
            run.spec, lambda repo, bundle, label: client.resolve(repo, bundle, label).id, run.status.pinned_inputs
        )
    finally:
        client.close()


def start(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    namespace = str(namespace)
    when = reconcile.now()
    status = parse_status(body.get("status"))
    if status.phase is not None and status.phase.terminal:
        return
    try:
        run = DataRun.from_body(body)
        with metrics.timed(metrics.PIN_SECONDS):
            pinned = _pin(run)
        invalid = LINEAGE.invalid_input(run, pinned)
        if invalid is not None:
            _apply(namespace, name, body, reconcile.failed_status(status, reconcile.INPUT_INVALID, invalid, when))
            raise kopf.PermanentError(str(invalid))
        pod = get_pod(run, pinned, SETTINGS)
    except SpecError as err:
        _apply(namespace, name, body, reconcile.failed_status(status, "InvalidSpec", err, when))
        raise kopf.PermanentError(str(err)) from None
    except reconcile.PinError as err:
        if err.permanent:
            _apply(namespace, name, body, reconcile.failed_status(status, "PinFailed", err.as_spec_error(), when))
            raise kopf.PermanentError(str(err)) from None
        _post(body, (reconcile.Event("Warning", "StoreUnavailable", str(err)),))
        raise kopf.TemporaryError(str(err), delay=30) from None
    key, hit = _cache_lookup(body, run, pinned)
    try:
        if key is not None and hit is not None:
            # A hit creates no pod: the labels move to the earlier bundles, the record links both runs.
            _move_cached_labels(run, hit)
            record = _create_record(run, runrecord.cached_record(run, pinned, when, key, hit, body))
            _apply(namespace, name, body, reconcile.cache_hit_status(status, run, pinned, when, record, hit, key.key))
            return
        record = _create_record(run, runrecord.started_record(run, pinned, when, key, body))
    except DatarunError as err:
        _post(body, (reconcile.Event("Warning", "StoreUnavailable", f"cannot write the run record: {err}"),))
        raise kopf.TemporaryError(str(err), delay=30) from None
    _apply(namespace, name, body, reconcile.started_status(status, run, pinned, when, record, key.key if key else None))
    with metrics.timed(metrics.POD_CREATE_SECONDS):
        created = kube().create_pod(pod)
    if created:
        _post(body, (reconcile.Event("Normal", "PodCreated", f"created pod `{pod_name(name)}`"),))
        return
    existing = kube().get_pod(namespace, pod_name(name))
    if existing is None:
        raise kopf.TemporaryError("the pod was being deleted while we created it; retrying", delay=5)
    if not reconcile.owned_by(existing, run.uid):
        raise kopf.TemporaryError(
            f"pod `{pod_name(name)}` exists but belongs to something else (an older DataRun `{name}`?); "
            "waiting for it to go",
            delay=15,
        )
    _post(body, (reconcile.Event("Normal", "PodAdopted", f"pod `{pod_name(name)}` exists already; following it"),))
    sync_run(namespace, name, existing)


# -- the run cache (datarun.cache) -------------------------------------------------------------


def _versions() -> dict[str, str]:
    return {"wrapper": SETTINGS.images.wrapper, "sidecar": SETTINGS.images.sidecar}


def _cache_lookup(body: kopf.Body, run: DataRun, pinned: Mapping[str, str]) -> tuple[CacheKey | None, Run | None]:
    """The run's cache key (None: policy off, or no store) and, under policy `use`, the earlier
    run to reuse. A store that cannot answer is a miss with a Warning: running is always safe."""
    policy = runrecord.cache_policy(run)
    if policy is CachePolicy.OFF or not run.spec.outputs:
        return None, None
    try:
        url = store_of(run.spec, SETTINGS)[0]
    except SpecError:
        return None, None
    try:
        client = connect(url)
    except DatarunError:
        return None, None
    try:
        manifests = {}
        sources = [(i.name, i.repo) for i in run.spec.inputs]
        sources += [(d.name, d.source_repo) for d in run.spec.databases if d.source_repo]
        for name, repo in sources:
            manifests[name] = client.get_bundle(repo, pinned[name]).manifest
        key = runrecord.cache_key(run, manifests, _versions())
        if policy is not CachePolicy.USE:
            return key, None
        # Lineage answers whether a candidate was invalidated (its run, inputs or outputs).
        found = client.cache.checking(invalidation_check(client.meta, client.cache_dir)).lookup(key)
        return key, found.hit
    except DatarunError as err:
        _post(body, (reconcile.Event("Warning", "CacheUnavailable", f"cache lookup failed, running: {err}"),))
        return None, None
    finally:
        client.close()


def _move_cached_labels(run: DataRun, hit: Run) -> None:
    earlier = {o.name: o for o in hit.outputs}
    client = connect(store_of(run.spec, SETTINGS)[0])
    try:
        for out in run.spec.outputs:
            if out.label:
                client.set_label(out.repo, out.label, earlier[out.name].bundle, retries=5)
    finally:
        client.close()


def _record_cache_entry(client: Client, run: DataRun, record: Run, pod: Mapping[str, Any] | None) -> None:
    """After a Succeeded run: the kubelet's imageID into the record (and into the key, for an
    image given by tag), then the cache entry, if the run qualifies."""
    if record.cache is None or runrecord.cache_policy(run) is CachePolicy.OFF:
        return
    image_id = app_image_id(pod)
    key = key_from_parts(record.cache.parts, image_id)
    if image_id or key.key != record.cache.key:
        stamp = runrecord.stamp_of(key, runrecord.cache_policy(run))
        record = client.runs.update(
            record.id, lambda r: replace(r, image_digest=image_id or r.image_digest, cache=stamp)
        )
    client.cache.record(record, key)


# -- the run record (datarun.runs) -------------------------------------------------------------


def _create_record(run: DataRun, record: Run) -> str | None:
    """Version 1 of the run record, and its id; a retried create finds the one it wrote (the id
    is stable). None when no store is configured: a run without data has nowhere to record."""
    try:
        url = store_of(run.spec, SETTINGS)[0]
    except SpecError:
        return None
    client = connect(url)
    try:
        client.runs.create(record)
    except ConflictError:
        pass
    else:
        _refresh_index(client, url)
    finally:
        client.close()
    return record.id


def _refresh_index(client: Client, url: str) -> None:
    """Bring the configured run index up to date with the default store, so a team's queries see
    the run at once. Best effort: the store is the truth, and any reader's sync catches up."""
    if not SETTINGS.index.url or url != SETTINGS.store.url:
        return  # one index, one store: another store's runs would reset it
    from datarun.catalog import open_index

    try:
        with open_index(SETTINGS.index.url, client.cache_dir) as index:
            index.sync(client.meta)
    except Exception as err:  # a broken index must not fail the run; its errors redact the URL
        logger.warning("cannot update the run index: %s: %s", type(err).__name__, err)


def _finish_record(
    raw: Mapping[str, Any], status: Any, update: reconcile.StatusUpdate, pod: Mapping[str, Any] | None = None
) -> bool:
    """Write the run's end into its record before the status says the run ended: if the store
    fails, the status stays unfinished and the resync timer tries again. False: try later."""
    finish = runrecord.finish_of(status, update.patch)
    if finish is None or not status.run_record:
        return True
    try:
        run = DataRun.from_body(raw)
        client = connect(store_of(run.spec, SETTINGS)[0])
    except (SpecError, DatarunError) as err:
        logger.warning("DataRun %s: cannot open the store for its run record: %s", status.run_record, err)
        return True  # a spec that cannot run never had a record worth waiting for
    try:
        done = client.runs.finish(status.run_record, finish.phase, finish.exit_code, finish.outputs, end=finish.end)
        if done.phase == SUCCEEDED:
            _record_cache_entry(client, run, done, pod)
        _refresh_index(client, store_of(run.spec, SETTINGS)[0])
    except DatarunError as err:
        _post(raw, (reconcile.Event("Warning", "RunRecordFailed", f"cannot finish the run record: {err}"),))
        return False
    finally:
        client.close()
    LINEAGE.post_openlineage(raw, done.to_json(), client.meta.url)
    return True


# -- following the pod --------------------------------------------------------------------------


def sync_run(namespace: str, name: str, pod: Mapping[str, Any] | None) -> None:
    """Bring the DataRun's status up to date with its pod (None: the pod is gone)."""
    raw = kube().get_datarun(namespace, name)
    if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
        return
    uid = (raw.get("metadata") or {}).get("uid", "")
    if pod is not None and not reconcile.owned_by(pod, uid):
        return  # a pod left over from an earlier DataRun of the same name
    try:
        status = parse_status(raw.get("status"))
    except SpecError as err:
        logger.warning("DataRun %s/%s has an unreadable status (%s); rewriting it", namespace, name, err)
        status = parse_status({})
    if status.pod_name is None and pod is None:
        return  # not started yet: the create handler is still at it
    update = reconcile.status_from_pod(status, pod, reconcile.now())
    if not _finish_record(raw, status, update, pod):
        return
    _apply(namespace, name, raw, update)


def follow_pod(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    pod = None if event.get("type") == "DELETED" else dict(body)
    sync_run(str(namespace), labels[LABEL_RUN], pod)


def _unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    phase = status.get("phase")
    return bool(status.get("podName")) and phase not in (Phase.SUCCEEDED.value, Phase.FAILED.value)


def resync(namespace: str | None, name: str, status: Mapping[str, Any], **_: Any) -> None:
    sync_run(str(namespace), name, kube().get_pod(str(namespace), str(status.get("podName"))))


# -- update, delete -----------------------------------------------------------------------------


def spec_change(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
    event = reconcile.spec_change_event(old, new, parse_status(body.get("status")))
    if event is not None:
        _post(body, (event,))


def stop(namespace: str | None, name: str, **_: Any) -> None:
    kube().delete_pod(str(namespace), pod_name(name))


# -- admission ----------------------------------------------------------------------------------


def _repo_exists(repo: str, store_url: str) -> bool | None:
    try:
        client = connect(store_url)
    except DatarunError:
        return None
    try:
        client.get_repo(repo)
        return True
    except NotFoundError:
        return False
    except DatarunError:
        return None
    finally:
        client.close()


def validate(body: kopf.Body, **kwargs: Any) -> None:
    """The admission check; kopf passes ``operation`` and ``old`` among the kwargs."""
    checker = None
    if SETTINGS.webhook.check_repos:
        spec = body.get("spec") or {}
        url = str((spec.get("store") or {}).get("url") or SETTINGS.store.url)
        checker = (lambda repo: _repo_exists(repo, url)) if url else None
    try:
        with metrics.timed(metrics.WEBHOOK_SECONDS, "validate"):
            reconcile.admission_check(kwargs.get("operation"), body, kwargs.get("old"), checker)
    except SpecError as err:
        raise kopf.AdmissionError(str(err), code=422) from None


def _configmap(namespace: str, name: str) -> dict[str, str] | None:
    return kube().get_configmap_data(namespace, name)


def inject(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    """The mutating webhook for pods: the pure module decides, kopf diffs the changed body into the
    JSONPatch it answers with. kopf passes ``operation`` among the kwargs."""
    try:
        with metrics.timed(metrics.WEBHOOK_SECONDS, "inject"):
            ops = webhook.injection_patch(body, SETTINGS, _configmap, kwargs.get("operation"))
    except webhook.InjectionError as err:
        raise kopf.AdmissionError(str(err), code=422) from None
    if ops:
        patch.fns.append(lambda raw: webhook.apply_patch(cast(dict[str, Any], raw), ops))


def observe(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Every DataRun event feeds ``datarun_dataruns{phase}`` (the initial listing included)."""
    metrics.observe_body(body, deleted=event.get("type") == "DELETED")


# -- registration -------------------------------------------------------------------------------
# Registered by call rather than as decorators, so the functions keep their own signatures (tests
# call them with just the arguments they use).

kopf.on.startup()(configure)
kopf.on.startup(id="reruns")(LINEAGE.follow_reruns)
kopf.on.cleanup(id="reruns")(LINEAGE.stop)
kopf.on.create(GROUP, VERSION, PLURAL, id="start")(metrics.counted("start", start))
kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: kopf.PRESENT})(
    metrics.counted("follow_pod", follow_pod)
)
kopf.on.event(GROUP, VERSION, PLURAL, id="metrics")(observe)
kopf.timer(GROUP, VERSION, PLURAL, id="resync", interval=SETTINGS.resync_seconds, idle=10, when=_unfinished)(
    metrics.counted("resync", resync)
)
if SETTINGS.lineage_seconds > 0:
    kopf.timer(GROUP, VERSION, PLURAL, id="lineage", interval=SETTINGS.lineage_seconds, idle=5, when=finished)(
        metrics.counted("lineage", LINEAGE.check_invalidated)
    )
kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="spec-change")(metrics.counted("spec_change", spec_change))
kopf.on.delete(GROUP, VERSION, PLURAL, id="stop")(metrics.counted("stop", stop))


if SETTINGS.webhook.enabled:
    # kopf refuses to start with admission handlers and no webhook server: register only when served.
    kopf.on.validate(GROUP, VERSION, PLURAL, id="validate-datarun", operations=["CREATE", "UPDATE"])(validate)
    # Every pod the chart's objectSelector sends (label datarun.io/inject); the annotation decides.
    kopf.on.mutate("", "v1", "pods", id="inject-datarun", operations=["CREATE"])(inject)
