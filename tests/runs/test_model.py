"""The run document: its JSON form round-trips, bad values name the field, newer formats are refused."""

from __future__ import annotations

from typing import Any

import pytest

from datarun.errors import IntegrityError, UsageError
from datarun.ids import new_ksuid
from datarun.runs import RUN_FORMAT, BundleLink, CacheStamp, Run, Source
from datarun.runs.exekias import parse_folder_name, parse_params, parse_start

CONTRACT_KEYS = {
    "format", "id", "version", "updated", "start", "end", "title", "phase", "exit_code", "params", "command",
    "image", "image_digest", "author", "host", "inputs", "outputs", "tags", "annotations", "hidden", "source",
    "cache", "transfers", "resource", "rerun_of",
}  # fmt: skip


def _run(**changes: Any) -> Run:
    base: dict[str, Any] = {
        "id": new_ksuid(),
        "start": "2023-06-09T14:28:56.000000Z",
        "title": "sample",
        "updated": "2023-06-09T14:30:00.000000Z",
        "params": {"description": "sample", "model": {"lr": 0.02, "layers": [64, 32]}, "ok": True, "none": None},
        "inputs": (BundleLink("images", "images", new_ksuid()),),
        "outputs": (BundleLink("model", "models", new_ksuid()),),
        "tags": ("baseline",),
        "annotations": {"note": "first"},
        "source": Source("bundle", "file:///data/20230609-142856-sample"),
    }
    base.update(changes)
    return Run(**base)


def test_document_has_exactly_the_contract_fields_and_round_trips() -> None:
    run = _run()
    doc = run.to_json()
    assert set(doc) == CONTRACT_KEYS
    assert doc["format"] == RUN_FORMAT
    assert doc["inputs"][0] == {"name": "images", "repo": "images", "bundle": run.inputs[0].bundle}
    assert Run.from_json(doc) == run


def test_newer_format_is_a_usage_error_naming_upgrade() -> None:
    doc = {**_run().to_json(), "format": RUN_FORMAT + 1}
    with pytest.raises(UsageError, match=r"newer than this datarun reads .*upgrade datarun"):
        Run.from_json(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "Done"}, "phase `Done` is not one of"),
        ({"exit_code": "0"}, "exit_code"),
        ({"params": [1, 2]}, "params"),
        ({"inputs": [{"name": "x", "repo": "Bad Repo", "bundle": new_ksuid()}]}, "invalid repo name"),
        ({"outputs": [{"name": "x", "repo": "r", "bundle": "nope"}]}, "not a bundle id"),
        ({"start": "yesterday"}, "not an ISO-8601 time"),
        ({"tags": ["ok", 3]}, "tags"),
        ({"id": "short"}, "not a run id"),
        ({"resource": ["not", "an", "object"]}, "resource"),
        ({"resource": {"kind": "DataRun"}}, "with a `spec` object"),
        ({"rerun_of": "last-week"}, "rerun_of `last-week` is not a run id"),
    ],
)
def test_malformed_documents_are_integrity_errors_naming_the_problem(change: dict[str, Any], message: str) -> None:
    doc = {**_run().to_json(), **change}
    with pytest.raises(IntegrityError, match=message):
        Run.from_json(doc)


def test_check_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(UsageError, match=r"params.model.lr is nan"):
        _run(params={"model": {"lr": float("nan")}}).check()
    with pytest.raises(UsageError, match="invalid tag"):
        _run(tags=(" padded",)).check()


def test_finished_adds_outputs_once_and_keeps_tags_in_order() -> None:
    run = _run()
    extra = BundleLink("db", "dumps", new_ksuid())
    done = run.finished("Succeeded", 0, (run.outputs[0], extra), end="2023-06-09T15:00:00Z")
    assert done.outputs == (run.outputs[0], extra)
    assert (done.phase, done.exit_code, done.end) == ("Succeeded", 0, "2023-06-09T15:00:00Z")
    assert run.with_tags(("a", "baseline", "b")).tags == ("baseline", "a", "b")
    assert run.with_tags(("a",)).without_tags(("baseline",)).tags == ("a",)


def test_exekias_folder_names() -> None:
    assert parse_folder_name("20230609-142856-my-title") == ("2023-06-09T14:28:56.000000Z", "my-title")
    assert parse_folder_name("20231309-142856-bad-month") is None
    assert parse_folder_name("run-42") is None
    assert parse_start("20230609-142856") == "2023-06-09T14:28:56.000000Z"
    assert parse_start("2023-06-09T16:28:56+02:00") == "2023-06-09T14:28:56.000000Z"
    with pytest.raises(UsageError, match="--start `soon` is not a time"):
        parse_start("soon")


def test_params_errors_give_line_and_column() -> None:
    assert parse_params('{"a": {"b": [1, 2.5, true, null]}}', "p.json") == {"a": {"b": [1, 2.5, True, None]}}
    with pytest.raises(UsageError, match=r"`p.json` is not JSON: line 3 column 8: Expecting value"):
        parse_params('{\n  "a": 1,\n  "b": }', "p.json")
    with pytest.raises(UsageError, match="holds a JSON list, not an object"):
        parse_params("[1]", "p.json")
    with pytest.raises(UsageError, match="`NaN` is not JSON"):
        parse_params('{"a": NaN}', "p.json")


def test_a_cache_stamp_round_trips_and_a_bad_cached_from_is_corrupt() -> None:
    stamp = CacheStamp("ab" * 32, 1, {"command": ["x"], "params": {"lr": 1}}, "refresh", new_ksuid())
    run = _run(cache=stamp)
    assert Run.from_json(run.to_json()) == run
    assert Run.from_json({**run.to_json(), "cache": None}).cache is None
    bad = {**run.to_json(), "cache": {**stamp.to_json(), "cached_from": "nope"}}
    with pytest.raises(IntegrityError, match="cached_from"):
        Run.from_json(bad)


def test_the_recorded_resource_and_rerun_of_round_trip_and_older_records_parse_without_them() -> None:
    resource = {"apiVersion": "datarun.io/v1alpha1", "kind": "DataRun", "metadata": {"name": "x"}, "spec": {"a": 1}}
    run = _run(resource=resource, rerun_of=new_ksuid())
    assert Run.from_json(run.to_json()) == run
    older = {k: v for k, v in _run().to_json().items() if k not in ("resource", "rerun_of")}
    parsed = Run.from_json(older)
    assert (parsed.resource, parsed.rerun_of) == (None, None)
