"""Flags: booleans that other parts of datarun keep on indexed runs (lineage's ``run.invalid``)."""

from __future__ import annotations

import pytest

from datarun.catalog import Index
from datarun.errors import UsageError
from tests.catalog.writer import run_doc


def _ids(index: Index, query: str) -> set[str]:
    return {str(r["id"]) for r in index.query(query, top=None, include_hidden=True)}


def test_a_flag_is_queryable_true_and_false_and_follows_changes(index: Index) -> None:
    index.add([run_doc("a"), run_doc("b"), run_doc("c")])
    assert index.set_flags("invalid", ["a", "not-indexed"], full=True) == 3
    assert _ids(index, "run.invalid = true") == {"a"}
    assert _ids(index, "run.invalid = false") == {"b", "c"}
    assert index.set_flags("invalid", ["a"]) == 0  # nothing changed: nothing written
    assert index.set_flags("invalid", ["b"]) == 2
    assert _ids(index, "run.invalid = true") == {"b"}
    assert _ids(index, "NOT run.invalid") == {"a", "c"}


def test_a_newer_version_drops_the_flag_until_a_full_pass(index: Index) -> None:
    index.add([run_doc("a"), run_doc("b")])
    index.set_flags("invalid", ["a"], full=True)
    index.add([run_doc("a", version=2, title="again"), run_doc("b", version=2, title="again")])
    assert _ids(index, "IS_DEFINED(run.invalid)") == set()
    assert index.set_flags("invalid", ["a"]) == 1  # a true flag is restored by the cheap pass ...
    assert _ids(index, "IS_DEFINED(run.invalid)") == {"a"}
    assert index.set_flags("invalid", ["a"], full=True) == 1  # ... a false one needs the full pass
    assert _ids(index, "run.invalid = false") == {"b"}


@pytest.mark.parametrize("name", ["title", "params", "Invalid", "in valid", ""])
def test_a_flag_cannot_shadow_a_record_field_or_be_odd(index: Index, name: str) -> None:
    index.add([run_doc("a")])
    with pytest.raises(UsageError, match="cannot be a run flag"):
        index.set_flags(name, ["a"])
    assert _ids(index, "IS_DEFINED(run.title)") == {"a"}
