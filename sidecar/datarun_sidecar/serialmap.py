"""datamon's serialised-map format for the postgres sidecar's environment variables.

``<entry_sep><kv_sep><entry>[<entry_sep><entry>...]`` where each entry is ``key`` (a flag,
True) or ``key<kv_sep>value``. The two separators are single characters other than ``.``.
Example: ``;:a;b:c`` is ``{"a": True, "b": "c"}``.
"""

from __future__ import annotations


class SerialMapError(ValueError):
    pass


def parse_serialized_map(text: str, *, name: str = "value") -> dict[str, str | bool]:
    if len(text) < 2:
        raise SerialMapError(
            f"{name}: {text!r} is too short; it must start with an entry separator and a key/value separator, "
            "e.g. ';:a;b:c'"
        )
    entry_sep, kv_sep = text[0], text[1]
    if "." in (entry_sep, kv_sep):
        raise SerialMapError(f"{name}: `.` cannot be a separator (got {entry_sep!r} and {kv_sep!r})")
    if entry_sep == kv_sep:
        raise SerialMapError(f"{name}: the entry and key/value separators must differ (both {entry_sep!r})")
    out: dict[str, str | bool] = {}
    body = text[2:]
    if not body:
        return out
    for entry in body.split(entry_sep):
        if not entry:
            raise SerialMapError(f"{name}: empty entry in {text!r} (two separators in a row?)")
        key, sep, value = entry.partition(kv_sep)
        if not key:
            raise SerialMapError(f"{name}: entry {entry!r} has no key")
        if key in out:
            raise SerialMapError(f"{name}: key {key!r} appears twice")
        out[key] = value if sep else True
    return out
