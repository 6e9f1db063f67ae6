"""The operator's metrics, scraped over HTTP from the real prometheus-client server (no cluster:
the handlers' bookkeeping is fed DataRun bodies as the watch would deliver them)."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from datarun_operator import metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _body(uid: str, phase: str | None, age: float = 5.0) -> dict[str, object]:
    created = (datetime.now(UTC) - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"uid": uid, "creationTimestamp": created}, "status": {"phase": phase} if phase else {}}


@pytest.fixture(scope="module")
def port() -> int:
    return metrics.serve(_free_port(), "127.0.0.1")


def test_dataruns_by_phase_follow_the_watch(port: int) -> None:
    for i in range(3):
        metrics.observe_body(_body(f"m-run-{i}", "Running"))
    metrics.observe_body(_body("m-new", None))
    metrics.observe_body(_body("m-run-0", "Succeeded", age=12.0))
    metrics.observe_body(_body("m-run-0", "Succeeded", age=12.0))  # repeated events count once
    metrics.observe_body(_body("m-run-1", "Failed"))
    metrics.observe_body(_body("m-run-2", "Running"), deleted=True)
    got = scrape(port)
    counts = {dict(labels)["phase"]: v for (name, labels), v in got.items() if name == "datarun_dataruns"}
    assert counts["Succeeded"] == 1 and counts["Failed"] == 1 and counts["Running"] == 0 and counts["None"] == 1
    assert got[("datarun_run_seconds_count", (("phase", "Succeeded"),))] == 1
    assert got[("datarun_run_seconds_sum", (("phase", "Succeeded"),))] >= 11


def test_histograms_and_error_counts(port: int) -> None:
    with metrics.timed(metrics.PIN_SECONDS):
        pass
    with metrics.timed(metrics.WEBHOOK_SECONDS, "validate"):
        pass

    def boom(**_: object) -> None:
        raise RuntimeError("no")

    wrapped = metrics.counted("start", boom)
    with pytest.raises(RuntimeError):
        wrapped(name="x")
    got = scrape(port)
    assert got[("datarun_pin_seconds_count", ())] >= 1
    assert got[("datarun_webhook_seconds_count", (("webhook", "validate"),))] >= 1
    assert got[("datarun_reconcile_errors_total", (("handler", "start"), ("kind", "unexpected")))] == 1
