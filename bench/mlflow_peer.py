"""The MLflow side of bench_runs.py, run by MLflow's own venv (it is not a datarun dependency).

    <mlflow-venv>/bin/python bench/mlflow_peer.py DB RUNS.jsonl QUERIES.json REPS

Creates an MLflow tracking database with MLflow itself (so its schema and indexes are MLflow's),
loads the runs with plain INSERTs (logging 100k runs through the client would take an hour and
measure nothing we compare), then times ``MlflowClient.search_runs`` per query and prints JSON.
MLflow keeps params as strings, so numbers are also logged as metrics: that is how an MLflow user
gets a numeric range, and it is what the "equivalent filter" uses.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import time
import uuid
from typing import Any


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flat(f"{prefix}{key}.", child, out)
    else:
        out[prefix[:-1]] = value


def main() -> None:
    db, runs_path, queries_path, reps_text = sys.argv[1:5]
    reps = int(reps_text)
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench")
    load_started = time.perf_counter()
    con = sqlite3.connect(db)
    uuids: dict[str, str] = {}
    run_rows, param_rows, metric_rows, tag_rows = [], [], [], []
    with open(runs_path) as handle:
        for line in handle:
            doc = json.loads(line)
            rid = uuid.uuid4().hex
            uuids[rid] = doc["id"]
            start_ms = int(doc["start_ms"])
            run_rows.append(
                (
                    rid,
                    doc["title"],
                    "LOCAL",
                    "",
                    "",
                    "bench",
                    "FINISHED",
                    start_ms,
                    start_ms + 1000,
                    "",
                    "active",
                    "",
                    int(experiment),
                )
            )
            flat: dict[str, Any] = {}
            _flat("", doc["params"], flat)
            for key, value in flat.items():
                param_rows.append((key, json.dumps(value) if not isinstance(value, str) else value, rid))
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metric_rows.append((key, float(value), start_ms, 0, 0, rid))
            tag_rows.append(("mlflow.runName", doc["title"], rid))
    con.executemany(
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time,"
        " end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        run_rows,
    )
    con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", param_rows)
    con.executemany(
        "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", metric_rows
    )
    con.executemany(
        "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", metric_rows
    )
    con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tag_rows)
    con.commit()
    con.close()
    load_seconds = time.perf_counter() - load_started
    results: dict[str, Any] = {"mlflow": mlflow.__version__, "backend": uri.split(":")[0], "load_seconds": load_seconds}
    with open(queries_path) as handle:
        queries = json.load(handle)
    for name, spec in queries.items():
        times = []
        found: list[str] = []
        for _ in range(reps + 1):
            began = time.perf_counter()
            runs = client.search_runs(
                [experiment], filter_string=spec["filter"], order_by=spec.get("order_by"), max_results=spec["top"]
            )
            times.append(time.perf_counter() - began)
            found = [uuids[r.info.run_id] for r in runs]
        results[name] = {"p50": statistics.median(times[1:]), "ids": found}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
