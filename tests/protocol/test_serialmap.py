"""datamon's `<entry_sep><kv_sep><entries>` environment format."""

from __future__ import annotations

import pytest

from datarun_sidecar.serialmap import SerialMapError, parse_serialized_map


def test_datamons_own_example() -> None:
    assert parse_serialized_map(";:a;b:c") == {"a": True, "b": "c"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (",=p=5432,m=my message,l=latest,r=db", {"p": "5432", "m": "my message", "l": "latest", "r": "db"}),
        ("|#c#/tmp/coord|V#true|S", {"c": "/tmp/coord", "V": "true", "S": True}),
        (";:", {}),
        (";:m:a:b", {"m": "a:b"}),  # only the first key/value separator splits
        (";:k:", {"k": ""}),
    ],
)
def test_separator_edge_cases(text: str, expected: dict[str, str | bool]) -> None:
    assert parse_serialized_map(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (";", "too short"),
        (".:a", "cannot be a separator"),
        (";;a", "must differ"),
        (";:a;;b", "empty entry"),
        (";::v", "has no key"),
        (";:a;a:1", "appears twice"),
    ],
)
def test_malformed_values_get_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(SerialMapError, match=message) as info:
        parse_serialized_map(text, name="dm_pg_db_main")
    assert str(info.value).startswith("dm_pg_db_main:")
