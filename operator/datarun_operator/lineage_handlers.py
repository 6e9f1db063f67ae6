"""The operator's lineage side: the kopf-facing half of :mod:`datarun_operator.invalidation` and
:mod:`datarun_operator.rerun`, kept out of :mod:`datarun_operator.handlers`, which wires it.

- at pin time, an invalidated input fails the run (the feed is re-polled, never trusted stale);
- a finished run gets the ``Invalidated`` condition and Event, and ``onInputInvalidated: rerun``
  re-creates it (the per-run timer);
- ``rerun`` invalidation actions: the CLI records their executions as pending for the operator;
  a thread polls each store it knows for them and re-creates each named run from its record,
  recording the outcome create-only (so a restarted operator never creates twice). The thread
  posts no Events: kopf's event poster works only inside its handlers; the outcome record
  (``datarun lineage descendants``) and the new DataRun's labels say what happened;
- the OpenLineage events of a run that ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from datarun.errors import DatarunError, NotFoundError, PreconditionFailed
from datarun.lineage.actions import pending_reruns
from datarun.lineage.layout import dumps
from datarun.repo import Client, connect
from datarun_operator import invalidation, reconcile, rerun
from datarun_operator.feed import LineageFeed
from datarun_operator.kube import Kube
from datarun_operator.models import MAX_RUN_NAME, DataRun, Phase, SpecError
from datarun_operator.runrecord import LABEL_RERUN_OF, LABEL_RERUN_OF_RUN
from datarun_operator.settings import Settings
from datarun_operator.wire import store_of

logger = logging.getLogger("datarun_operator")

Post = Callable[[Mapping[str, Any], tuple[reconcile.Event, ...]], None]


def finished(status: Mapping[str, Any], **_: Any) -> bool:
    """The lineage timer's filter: only finished runs can be invalidated after the fact."""
    return status.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value)


class Retry(Exception):
    """A rerun that could not be settled now (the apiserver or the store did not answer)."""


class Lineage:
    def __init__(self, settings: Callable[[], Settings], kube: Callable[[], Kube], post: Post) -> None:
        self._settings = settings  # read at each call: handlers owns the settings (tests replace them)
        self.kube = kube
        self.post = post
        self.feed = LineageFeed(settings().lineage_seconds)
        # Stores whose pending reruns the thread follows: the default one (added at startup), and
        # every store a finished DataRun names (learnt by its lineage timer).
        self.stores: set[str] = set()
        # Per store, the keys of executions whose every run has an outcome: not read again.
        self._settled: dict[str, set[str]] = {}
        self._stop = threading.Event()

    @property
    def settings(self) -> Settings:
        return self._settings()

    # -- pin time -------------------------------------------------------------------------------

    def invalid_input(self, run: DataRun, pinned: Mapping[str, str]) -> SpecError | None:
        keys = invalidation.input_keys(run.spec, pinned)
        if not keys:
            return None
        url = store_of(run.spec, self.settings)[0]
        try:
            self.feed.watermark(url, fresh=True)
            reasons = self.feed.reasons(url, list(keys))
        except DatarunError as err:
            raise reconcile.PinError(
                "spec.inputs", f"cannot read the lineage of the store: {err}", permanent=False
            ) from None
        return invalidation.invalid_input(run.spec, pinned, reasons)

    # -- finished runs --------------------------------------------------------------------------

    def check_invalidated(self, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        """The ``Invalidated`` condition and Event of a finished run, and ``onInputInvalidated: rerun``.
        Cheap when nothing changed: the feed's watermark is shared, and equal to the one this run saw."""
        try:
            run = DataRun.from_body(body)
            url = store_of(run.spec, self.settings)[0]
        except SpecError:
            return
        self.stores.add(url)
        mark = self.feed.watermark(url)
        if memo.get("watermark") == mark:
            return
        keys = invalidation.run_keys(run)
        reasons = self.feed.reasons(url, list(keys))
        update = invalidation.invalidated_status(run.status, keys, reasons, reconcile.now())
        if update.patch:
            self.kube().patch_status(str(namespace), name, update.patch)
        self.post(body, update.events)
        if invalidation.wants_rerun(run, reasons):
            self._rerun_switch(body, run)
        memo["watermark"] = mark  # only once everything above went through: a failure retries

    def _rerun_switch(self, body: kopf.Body, run: DataRun) -> None:
        # The label query makes this idempotent: a restarted operator finds the rerun it made.
        if self.kube().list_dataruns(run.namespace, f"{LABEL_RERUN_OF}={run.uid}"):
            return
        made = rerun.rerun_body(body, MAX_RUN_NAME, run_id=run.status.run_record)
        created = self.kube().create_datarun(made)
        new_name = str((created.get("metadata") or {}).get("name", ""))
        message = f"an input was invalidated; created DataRun `{new_name}` to run again with fresh pins"
        self.post(body, (reconcile.Event("Normal", "Rerun", message),))

    # -- the `rerun` invalidation action --------------------------------------------------------

    def follow_reruns(self, **_: Any) -> None:
        """Start the thread that settles pending reruns (kopf calls this at startup)."""
        if self.settings.lineage_seconds <= 0:
            return
        if self.settings.store.url:
            self.stores.add(self.settings.store.url)
        threading.Thread(target=self._loop, name="datarun-reruns", daemon=True).start()

    def stop(self, **_: Any) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for url in sorted(self.stores):
                try:
                    self.settle_reruns(url)
                except Exception as err:  # the thread must outlive a bad store; the next tick retries
                    logger.warning("pending reruns of %s: %s: %s", url, type(err).__name__, err)
            self._stop.wait(self.settings.lineage_seconds)

    def settle_reruns(self, store_url: str) -> list[dict[str, Any]]:
        """Re-create every run a pending rerun execution names that has no outcome yet; returns the
        outcomes recorded now. A run the apiserver or store cannot answer for stays pending."""
        client = connect(store_url)
        recorded = []
        try:
            settled_here = self._settled.setdefault(store_url, set())
            for execution in pending_reruns(client, settled_here):
                settled = True
                for run_id in execution["runs"]:
                    try:
                        doc = self._settle(client, execution, str(run_id))
                    except Retry as err:
                        logger.warning("rerun of run %s: %s; trying again later", run_id, err)
                        settled = False
                        continue
                    if doc is not None:
                        recorded.append(doc)
                if settled:
                    settled_here.add(str(execution["key"]))
        finally:
            client.close()
        return recorded

    def _settle(self, client: Client, execution: Mapping[str, Any], run_id: str) -> dict[str, Any] | None:
        key, _ = rerun.outcome_doc(execution, run_id, rerun.CREATED, "", "")
        with contextlib.suppress(NotFoundError):
            client.meta.head(key)
            return None  # settled already, by this operator before a restart or by another
        try:
            record = client.runs.get(run_id)
        except NotFoundError:
            return self._record(client, execution, run_id, rerun.REFUSED, f"run {run_id} has no record in the store")
        except DatarunError as err:
            raise Retry(f"cannot read its record: {err}") from None
        namespace, name = rerun.record_target(record)
        try:
            live = self.kube().get_datarun(namespace, name) if record.resource is None and name else None
            source, why = rerun.source_of(record, live)
            if source is None:
                return self._record(client, execution, run_id, rerun.REFUSED, why)
            uid = record.annotations.get("datarun.io/uid", "")
            for selector in (f"{LABEL_RERUN_OF_RUN}={run_id}", f"{LABEL_RERUN_OF}={uid}" if uid else ""):
                found = self.kube().list_dataruns(namespace, selector) if selector else []
                if found:
                    detail = f"DataRun {namespace}/{found[0]['metadata']['name']} re-does it already"
                    return self._record(client, execution, run_id, rerun.CREATED, detail, found[0])
            created = self.kube().create_datarun(rerun.rerun_body(source, MAX_RUN_NAME, uid=uid, run_id=run_id))
        except ApiException as err:
            if err.status == 404:
                why = f"namespace `{namespace}` is gone (404): nowhere to re-create DataRun `{name}`"
                return self._record(client, execution, run_id, rerun.REFUSED, why)
            if err.status in (400, 403, 422):
                why = f"the apiserver refused the rerun of DataRun {namespace}/{name}: HTTP {err.status} {err.reason}"
                return self._record(client, execution, run_id, rerun.FAILED, why)
            raise Retry(f"the apiserver answered HTTP {err.status} {err.reason}") from None
        new = str((created.get("metadata") or {}).get("name", ""))
        detail = f"created DataRun {namespace}/{new} from the {'recorded' if record.resource else 'live'} spec"
        return self._record(client, execution, run_id, rerun.CREATED, detail, created)

    def _record(
        self,
        client: Client,
        execution: Mapping[str, Any],
        run_id: str,
        outcome: str,
        detail: str,
        made: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        key, doc = rerun.outcome_doc(execution, run_id, outcome, detail, reconcile.now(), made)
        try:
            client.meta.put_if_absent(key, dumps(doc))
        except PreconditionFailed:
            pass  # recorded by another settler first: theirs stands
        except DatarunError as err:
            # The DataRun exists; the label query finds it next time, so none is made twice.
            raise Retry(f"cannot record the outcome: {err}") from None
        logger.info("rerun of run %s: %s (%s)", run_id, outcome, detail)
        return doc

    # -- OpenLineage ----------------------------------------------------------------------------

    def post_openlineage(self, raw: Mapping[str, Any], doc: Mapping[str, Any], store_url: str) -> None:
        """The run's OpenLineage events, posted as it ends; a consumer that is down costs a Warning,
        never the run (the events can be exported again with `datarun lineage export`)."""
        url = self.settings.openlineage_url
        if not url:
            return
        import orjson

        from datarun.lineage.actions import post_json
        from datarun.lineage.openlineage import events

        for event in events(doc, store_url):
            ok, detail, _ = post_json(url, orjson.dumps(event), retries=2)
            if not ok:
                message = f"OpenLineage {event['eventType']} event not posted to {url}: {detail}"
                self.post(raw, (reconcile.Event("Warning", "OpenLineageFailed", message),))
                return
