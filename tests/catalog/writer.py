"""Run documents written straight into a store, as the runs <-> catalog contract lays them out.

A stand-in until the `runs` branch lands: the lead swaps ``write_version`` for the real writer
(``datarun/runs/``) at merge. It does what that writer must do and no more: the version object
create-only, then one change object whose body is the same document.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

from datarun.ids import new_ksuid
from datarun.store.base import ObjectStore


def run_doc(run_id: str | None = None, *, version: int = 1, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": 1,
        "id": run_id or new_ksuid(),
        "version": version,
        "updated": "2026-01-01T00:00:00Z",
        "start": "2026-01-01T00:00:00Z",
        "end": None,
        "title": "run",
        "phase": "Succeeded",
        "exit_code": 0,
        "params": {},
        "command": ["python", "train.py"],
        "image": "localhost/train:1",
        "image_digest": None,
        "author": "tester",
        "host": "here",
        "inputs": [],
        "outputs": [],
        "tags": [],
        "annotations": {},
        "hidden": False,
        "source": None,
    }
    doc.update(fields)
    return doc


def write_version(store: ObjectStore, doc: Mapping[str, Any], *, now: float | None = None) -> str:
    """Write one version of a run and its change; returns the change key."""
    store.put_if_absent(f"runs/records/{doc['id']}/{int(doc['version']):06d}.json", orjson.dumps(doc))
    return write_change(store, doc, now=now)


def write_change(store: ObjectStore, doc: Mapping[str, Any], *, now: float | None = None) -> str:
    """Only the change object: what a writer that retries after a crash may write twice."""
    key = f"runs/changes/{new_ksuid(now)}.json"
    store.put_if_absent(key, orjson.dumps(doc))
    return key


def corpus(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Documents with nested params, missing paths, mixed types and arrays: the property test's data."""
    rng = random.Random(seed)
    words = ["sample", "Sample", "test", "prod", "a-b", "x%y", "under_score", "", "zeta", "alpha"]
    docs = []
    for i in range(n):
        params: dict[str, Any] = {}
        if rng.random() < 0.8:
            params["description"] = rng.choice(words)
        if rng.random() < 0.7:
            params["lr"] = rng.choice([0.001, 0.01, 0.1, 1, 5, -2, 0, "0.1", None, True, [0.1]])
        if rng.random() < 0.6:
            params["model"] = {
                "layers": rng.randint(1, 6),
                "lr": rng.choice([0.01, 0.02, 0.5]),
                "name": rng.choice(words),
            }
        elif rng.random() < 0.3:
            params["model"] = rng.choice(["resnet", 3, None, ["a", "b"]])
        if rng.random() < 0.4:
            params["key with-dash"] = rng.choice([1, 2, "two", False])
        if rng.random() < 0.3:
            params["flag"] = rng.choice([True, False, None, "true", 1])
        tags = rng.sample(["gpu", "cpu", "nightly", "GPU", "x"], rng.randint(0, 3))
        docs.append(
            run_doc(
                f"run{i:05d}",
                start=f"2026-01-{1 + i % 28:02d}T{rng.randint(0, 23):02d}:00:00Z",
                title=rng.choice(words) + f"-{i}",
                phase=rng.choice(["Running", "Succeeded", "Failed", "Cached"]),
                params=params,
                tags=tags if rng.random() < 0.9 else "gpu",
                hidden=rng.random() < 0.1,
                inputs=[{"name": "data", "repo": "ds", "bundle": f"b{i % 5}"}] if rng.random() < 0.5 else [],
            )
        )
    return docs
