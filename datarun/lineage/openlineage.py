"""Run documents as OpenLineage RunEvents (spec 2-0-2), so Marquez and other consumers see datarun's runs.

A builder: one run document in, its events out - START at ``start``, then COMPLETE (Succeeded,
Cached) or FAIL (Failed) at ``end`` once the run has ended. OpenLineage wants a UUID run id;
datarun's is a KSUID, so the UUID is derived from it (UUID 5), the same on every export, and the
KSUID travels in a ``datarun`` run facet. Datasets are bundles: namespace ``datarun://<store>``,
name ``<repo>@<bundle-id>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
FACET_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunFacet"
PRODUCER = "https://github.com/datarun/datarun"
JOB_NAMESPACE = "datarun"
_NS = uuid.UUID("6d1c5d47-0d8b-4c1e-9a57-646174617275")  # datarun's own UUID 5 namespace
_END_STATES = {"Succeeded": "COMPLETE", "Cached": "COMPLETE", "Failed": "FAIL"}


def run_uuid(run_id: str) -> str:
    return str(uuid.uuid5(_NS, run_id))


def dataset_namespace(store_url: str) -> str:
    return "datarun://" + store_url.split("://", 1)[-1].strip("/")


def events(doc: Mapping[str, Any], store_url: str) -> Iterator[dict[str, Any]]:
    namespace = dataset_namespace(store_url)

    def datasets(links: Any) -> list[dict[str, Any]]:
        return [{"namespace": namespace, "name": f"{link['repo']}@{link['bundle']}", "facets": {}} for link in links]

    run = {
        "runId": run_uuid(str(doc["id"])),
        "facets": {
            "datarun": {
                "_producer": PRODUCER,
                "_schemaURL": FACET_SCHEMA,
                "runId": doc["id"],
                "version": doc.get("version"),
                "params": doc.get("params", {}),
                "image": doc.get("image", ""),
                "invalid": bool(doc.get("invalid", False)),
            }
        },
    }
    job = {"namespace": JOB_NAMESPACE, "name": str(doc.get("title") or doc["id"]), "facets": {}}
    base = {"producer": PRODUCER, "schemaURL": SCHEMA, "run": run, "job": job}
    yield {
        **base,
        "eventType": "START",
        "eventTime": _time(str(doc["start"])),
        "inputs": datasets(doc.get("inputs", [])),
        "outputs": [],
    }
    end_state = _END_STATES.get(str(doc.get("phase", "")))
    if end_state and doc.get("end"):
        yield {
            **base,
            "eventType": end_state,
            "eventTime": _time(str(doc["end"])),
            "inputs": datasets(doc.get("inputs", [])),
            "outputs": datasets(doc.get("outputs", [])),
        }


def _time(text: str) -> str:
    # datarun writes ...Z; a bare date (an imported folder's day) gets midnight UTC, which
    # OpenLineage's date-time requires.
    return text if "T" in text or "t" in text else f"{text}T00:00:00Z"
