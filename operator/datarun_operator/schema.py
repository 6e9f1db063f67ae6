"""The generic engine behind :mod:`datarun_operator.models`: typed records <-> JSON, with schema facts.

A model is a frozen dataclass whose fields are ``Annotated[<type>, FieldSchema(...)]``. The same
declarations drive three things: :meth:`RecordCodec.parse` (JSON -> records, raising
:class:`SpecError` that names the field, e.g. ``spec.inputs[1].label``), :func:`dump` (records ->
JSON for status patches) and :mod:`datarun_operator.crd` (the CRD's OpenAPI schema), so the
apiserver and the operator cannot disagree about a field.

Nothing here knows about DataRuns: the models module supplies the records and the wording of
its name rules (``pattern_hints``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar, Union


class SpecError(ValueError):
    """A DataRun that cannot run; ``field_path`` names the offending field (``spec.inputs[1].label``)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


@dataclass(frozen=True)
class Rule:
    """A CEL rule for ``x-kubernetes-validations`` (checked by the apiserver, mirrored by ``check``)."""

    rule: str
    message: str
    field_path: str = ""


@dataclass(frozen=True)
class FieldSchema:
    """Schema facts about one field; :mod:`datarun_operator.crd` turns them into OpenAPI."""

    description: str
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    int_or_string: bool = False
    """A string field that also accepts an integer (resource quantities)."""
    item_pattern: str | None = None
    """Pattern for the items of a list or the values of a map."""
    item_int_or_string: bool = False
    key_pattern: str | None = None
    """Pattern for the keys of a map (checked here; OpenAPI cannot say it)."""
    list_map_key: str | None = None
    """The items of this list are unique by this key (``x-kubernetes-list-type: map``)."""
    date_time: bool = False
    json_name: str | None = None


T = TypeVar("T")


def json_name(f: dataclasses.Field[Any], meta: FieldSchema | None) -> str:
    if meta is not None and meta.json_name:
        return meta.json_name
    head, *rest = f.name.split("_")
    return head + "".join(part.title() for part in rest)


def unwrap(tp: Any) -> tuple[Any, FieldSchema | None]:
    """``Annotated[X | None, FieldSchema]`` -> (X, FieldSchema). Optional fields are the ones with a default."""
    meta: FieldSchema | None = None
    if typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        meta = next((a for a in args[1:] if isinstance(a, FieldSchema)), None)
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported union {tp}")
        tp = members[0]
    return tp, meta


def fields_of(cls: type) -> list[tuple[dataclasses.Field[Any], Any, FieldSchema | None]]:
    """(field, type, schema facts) of a model, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f, *unwrap(hints[f.name])) for f in dataclasses.fields(cls)]


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True, kw_only=True)
class RecordCodec:
    """Parses JSON into models, checking types, patterns and bounds."""

    pattern_hints: Mapping[str, str] = field(default_factory=dict)
    """pattern -> what to tell a user whose value does not match it (default: the pattern itself)."""

    def parse(self, cls: type[T], raw: object, where: str, *, allow_unknown: bool = False) -> T:
        """Build ``cls`` from JSON; SpecError names the field. ``allow_unknown`` ignores unknown keys
        (a status written by a newer operator) instead of refusing them (a spec with a typo)."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SpecError(where, f"must be an object, not {_type_name(raw)}")
        known = fields_of(cls)
        names = {json_name(f, meta) for f, _, meta in known}
        if not allow_unknown:
            for key in raw:
                if key not in names:
                    raise SpecError(f"{where}.{key}", f"unknown field; known fields are {', '.join(sorted(names))}")
        kwargs: dict[str, Any] = {}
        for f, tp, meta in known:
            name = json_name(f, meta)
            here = f"{where}.{name}"
            if name not in raw or raw[name] is None:
                if not has_default(f):
                    raise SpecError(here, "is required")
                continue
            kwargs[f.name] = self._value(tp, meta, raw[name], here, allow_unknown)
        return cls(**kwargs)

    def _hint(self, pattern: str) -> str:
        return self.pattern_hints.get(pattern, f"must match {pattern}")

    def _scalar(
        self, tp: Any, meta: FieldSchema | None, raw: object, where: str, *, pattern: str | None, int_or_string: bool
    ) -> Any:
        if isinstance(tp, type) and issubclass(tp, StrEnum):
            allowed = [m.value for m in tp]
            if raw not in allowed:
                # YAML 1.1 (kubectl, PyYAML) reads a bare off/on/yes/no as a boolean.
                quote = (
                    "; YAML reads a bare off/on/yes/no as a boolean: quote the word" if isinstance(raw, bool) else ""
                )
                raise SpecError(where, f"must be one of {', '.join(allowed)} (got {raw!r}){quote}")
            return tp(raw)
        if tp is bool:
            if not isinstance(raw, bool):
                raise SpecError(where, f"must be a boolean, not {_type_name(raw)}")
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise SpecError(where, f"must be an integer, not {_type_name(raw)}")
            if meta is not None and meta.minimum is not None and raw < meta.minimum:
                raise SpecError(where, f"must be at least {meta.minimum} (got {raw})")
            if meta is not None and meta.maximum is not None and raw > meta.maximum:
                raise SpecError(where, f"must be at most {meta.maximum} (got {raw})")
            return raw
        if tp is str:
            if int_or_string and isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)
            if not isinstance(raw, str):
                raise SpecError(where, f"must be a string, not {_type_name(raw)}")
            if meta is not None and meta.min_length is not None and len(raw) < meta.min_length:
                raise SpecError(
                    where, "must not be empty" if meta.min_length == 1 else f"at least {meta.min_length} chars"
                )
            if meta is not None and meta.max_length is not None and len(raw) > meta.max_length:
                raise SpecError(where, f"at most {meta.max_length} characters (got {len(raw)})")
            if pattern is not None and not re.match(pattern, raw):
                raise SpecError(where, f"{raw!r} is not valid ({self._hint(pattern)})")
            return raw
        if tp is Any:
            return raw
        raise TypeError(f"unsupported field type {tp!r}")

    def _value(self, tp: Any, meta: FieldSchema | None, raw: object, where: str, allow_unknown: bool) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.parse(tp, raw, where, allow_unknown=allow_unknown)
        if origin is tuple:
            return self._items(typing.get_args(tp)[0], meta, raw, where, allow_unknown)
        if origin is dict:
            _key_tp, item_tp = typing.get_args(tp)
            if not isinstance(raw, dict):
                raise SpecError(where, f"must be an object, not {_type_name(raw)}")
            if item_tp is Any:
                if meta is not None and meta.key_pattern is not None:
                    for key in raw:
                        if not re.match(meta.key_pattern, str(key)):
                            raise SpecError(
                                f"{where}.{key}", f"key {key!r} is not valid ({self._hint(meta.key_pattern)})"
                            )
                return dict(raw)
            out = {}
            for key, item in raw.items():
                if meta is not None and meta.key_pattern is not None and not re.match(meta.key_pattern, str(key)):
                    raise SpecError(f"{where}.{key}", f"key {key!r} is not valid ({self._hint(meta.key_pattern)})")
                out[str(key)] = self._item(item_tp, meta, item, f"{where}.{key}", allow_unknown)
            return out
        return self._scalar(
            tp,
            meta,
            raw,
            where,
            pattern=meta.pattern if meta else None,
            int_or_string=bool(meta and meta.int_or_string),
        )

    def _items(
        self, item_tp: Any, meta: FieldSchema | None, raw: object, where: str, allow_unknown: bool
    ) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise SpecError(where, f"must be a list, not {_type_name(raw)}")
        if meta is not None and meta.min_items is not None and len(raw) < meta.min_items:
            raise SpecError(where, "must not be empty" if meta.min_items == 1 else f"needs {meta.min_items} items")
        if meta is not None and meta.max_items is not None and len(raw) > meta.max_items:
            raise SpecError(where, f"at most {meta.max_items} items (got {len(raw)})")
        items = tuple(self._item(item_tp, meta, item, f"{where}[{i}]", allow_unknown) for i, item in enumerate(raw))
        if meta is not None and meta.list_map_key:
            key = meta.list_map_key
            seen: dict[object, int] = {}
            for i, item in enumerate(items):
                value = getattr(item, key)
                if value in seen:
                    raise SpecError(f"{where}[{i}].{key}", f"duplicate {key} `{value}` (also {where}[{seen[value]}])")
                seen[value] = i
        return items

    def _item(self, tp: Any, meta: FieldSchema | None, raw: object, where: str, allow_unknown: bool) -> Any:
        if dataclasses.is_dataclass(tp):
            return self._value(tp, None, raw, where, allow_unknown)
        item_meta = FieldSchema("", pattern=meta.item_pattern if meta else None)
        return self._scalar(
            tp, item_meta, raw, where, pattern=item_meta.pattern, int_or_string=bool(meta and meta.item_int_or_string)
        )


def dump(obj: Any) -> Any:
    """Records -> JSON (camelCase keys; None left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f, _tp, meta in fields_of(type(obj)):
            value = getattr(obj, f.name)
            if value is not None:
                out[json_name(f, meta)] = dump(value)
        return out
    if isinstance(obj, StrEnum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj
