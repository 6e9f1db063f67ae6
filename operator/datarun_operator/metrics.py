"""Prometheus metrics of the operator, served on ``/metrics`` (prometheus-client).

* ``datarun_dataruns{phase}``: DataRuns by phase, as the watch last delivered them. It is
  computed at scrape time from a table of every DataRun seen, so it is exact after a restart
  too (the watch's initial listing fills the table).
* ``datarun_pin_seconds``, ``datarun_pod_create_seconds``: how long label pinning and the
  pod create call took, per DataRun.
* ``datarun_run_seconds{phase}``: end to end, from the DataRun's creation to a terminal phase,
  observed once per DataRun.
* ``datarun_reconcile_errors_total{handler,kind}``: handler failures (temporary, permanent,
  unexpected).
* ``datarun_webhook_seconds{webhook}``: time spent answering admission reviews.

Everything here is process-local state with no Kubernetes calls, so the handlers stay thin: they
call ``observe``/``timed`` and this module does the bookkeeping.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from datarun_operator.models import Phase

REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

PIN_SECONDS = Histogram("datarun_pin_seconds", "Label pinning per DataRun.", registry=REGISTRY, buckets=_BUCKETS)
POD_CREATE_SECONDS = Histogram(
    "datarun_pod_create_seconds", "The run pod's create call.", registry=REGISTRY, buckets=_BUCKETS
)
RUN_SECONDS = Histogram(
    "datarun_run_seconds",
    "From a DataRun's creation to its terminal phase.",
    ["phase"],
    registry=REGISTRY,
    buckets=_BUCKETS,
)
RECONCILE_ERRORS = Counter("datarun_reconcile_errors", "Handler failures.", ["handler", "kind"], registry=REGISTRY)
WEBHOOK_SECONDS = Histogram(
    "datarun_webhook_seconds", "Answering one admission review.", ["webhook"], registry=REGISTRY, buckets=_BUCKETS
)

NO_PHASE = "None"  # created, not yet picked up


class _Phases(Collector):
    """``datarun_dataruns{phase}`` from the table of DataRuns the watch delivered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase: dict[str, str] = {}  # uid -> phase
        self._finished: set[str] = set()  # uids whose end-to-end time was observed

    def observe(self, uid: str, phase: str | None, created: str | None) -> None:
        value = phase or NO_PHASE
        with self._lock:
            self._phase[uid] = value
            first_end = value in (Phase.SUCCEEDED.value, Phase.FAILED.value) and uid not in self._finished
            if first_end:
                self._finished.add(uid)
        if first_end and created:
            started = _parse_time(created)
            if started is not None:
                RUN_SECONDS.labels(value).observe(max(0.0, time.time() - started))

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phase.pop(uid, None)
            self._finished.discard(uid)

    def counts(self) -> dict[str, int]:
        out = {p.value: 0 for p in Phase} | {NO_PHASE: 0}
        with self._lock:
            for value in self._phase.values():
                out[value] = out.get(value, 0) + 1
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("datarun_dataruns", "DataRuns by phase.", labels=["phase"])
        for phase, n in sorted(self.counts().items()):
            family.add_metric([phase], n)
        yield family


PHASES = _Phases()
REGISTRY.register(PHASES)


def _parse_time(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def observe_body(body: Mapping[str, Any], deleted: bool = False) -> None:
    """Record a DataRun as the watch delivered it."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    if not uid:
        return
    if deleted:
        PHASES.forget(uid)
        return
    status = body.get("status") or {}
    phase = status.get("phase") if isinstance(status, Mapping) else None
    PHASES.observe(uid, str(phase) if phase else None, meta.get("creationTimestamp"))


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(time.perf_counter() - started)


def counted(handler: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its failures counted (and re-raised: kopf decides about retries)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            count_error(handler, err)
            raise

    return wrapper


def count_error(handler: str, err: BaseException) -> None:
    name = type(err).__name__
    kind = "temporary" if "Temporary" in name else "permanent" if "Permanent" in name else "unexpected"
    RECONCILE_ERRORS.labels(handler, kind).inc()


def serve(port: int | None = None, address: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from other pods
    """Start the ``/metrics`` listener; returns the port. Off (0) unless DATARUN_OPERATOR_METRICS_PORT
    names one: the chart sets it, and test operators sharing a host do not fight over a default."""
    chosen = int(os.environ.get("DATARUN_OPERATOR_METRICS_PORT", "0")) if port is None else port
    if chosen:
        start_http_server(chosen, addr=os.environ.get("DATARUN_OPERATOR_METRICS_ADDRESS", address), registry=REGISTRY)
    return chosen
