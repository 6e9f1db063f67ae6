"""Generate the DataRun CRD from :mod:`datarun_operator.models`.

    python -m datarun_operator.crd            # (re)write charts/datarun/crds/datarun.io_dataruns.yaml
    python -m datarun_operator.crd --check    # exit 1 if that file is not what the models generate
    python -m datarun_operator.crd --stdout   # print it

The schema is structural (every field typed, ``required`` from fields without defaults, enums
from ``StrEnum`` types, name patterns, list-map keys for unique names) and carries the CEL
rules declared on the models, so the apiserver refuses most bad specs before the webhook sees them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from datarun_operator import models
from datarun_operator.schema import FieldSchema, Rule, fields_of, has_default, json_name

CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "datarun" / "crds" / "datarun.io_dataruns.yaml"
HEADER = (
    "# Generated from operator/datarun_operator/models.py by `python -m datarun_operator.crd`. Do not edit:\n"
    "# change the models and regenerate (CI runs `python -m datarun_operator.crd --check`).\n"
)


def _described(schema: dict[str, Any], meta: FieldSchema | None) -> dict[str, Any]:
    if meta is not None and meta.description:
        return {"description": meta.description, **schema}
    return schema


def _scalar_schema(tp: Any, *, pattern: str | None, int_or_string: bool, meta: FieldSchema | None) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        out: dict[str, Any] = {"type": "integer"}
        if meta is not None and meta.minimum is not None:
            out["minimum"] = meta.minimum
        if meta is not None and meta.maximum is not None:
            out["maximum"] = meta.maximum
        return out
    if tp is str:
        if int_or_string:
            out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        else:
            out = {"type": "string"}
        if meta is not None and meta.min_length is not None:
            out["minLength"] = meta.min_length
        if meta is not None and meta.max_length is not None:
            out["maxLength"] = meta.max_length
        if pattern is not None:
            out["pattern"] = pattern
        if meta is not None and meta.date_time:
            out["format"] = "date-time"
        return out
    raise TypeError(f"no schema for {tp!r}")


def type_schema(tp: Any, meta: FieldSchema | None) -> dict[str, Any]:
    """The OpenAPI v3 schema of one field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _described(object_schema(tp), meta)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(item_tp) and isinstance(item_tp, type):
            items = object_schema(item_tp)
        else:
            items = _scalar_schema(
                item_tp,
                pattern=meta.item_pattern if meta else None,
                int_or_string=bool(meta and meta.item_int_or_string),
                meta=None,
            )
        out: dict[str, Any] = {"type": "array", "items": items}
        if meta is not None and meta.min_items is not None:
            out["minItems"] = meta.min_items
        if meta is not None and meta.max_items is not None:
            out["maxItems"] = meta.max_items
        if meta is not None and meta.list_map_key:
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = [meta.list_map_key]
        return _described(out, meta)
    if origin is dict:
        value_tp = typing.get_args(tp)[1]
        if value_tp is Any:
            return _described({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, meta)
        values = _scalar_schema(
            value_tp,
            pattern=meta.item_pattern if meta else None,
            int_or_string=bool(meta and meta.item_int_or_string),
            meta=None,
        )
        return _described({"type": "object", "additionalProperties": values}, meta)
    return _described(
        _scalar_schema(
            tp, pattern=meta.pattern if meta else None, int_or_string=bool(meta and meta.int_or_string), meta=meta
        ),
        meta,
    )


def object_schema(cls: type) -> dict[str, Any]:
    """A dataclass as an OpenAPI object: properties, required (fields without a default), CEL rules."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f, tp, meta in fields_of(cls):
        name = json_name(f, meta)
        properties[name] = type_schema(tp, meta)
        if not has_default(f):
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    rules: tuple[Rule, ...] = getattr(cls, "CEL", ())
    if rules:
        out["x-kubernetes-validations"] = [
            {"rule": r.rule, "message": r.message, **({"fieldPath": r.field_path} if r.field_path else {})}
            for r in rules
        ]
    return out


def build_crd() -> dict[str, Any]:
    spec_schema = object_schema(models.DataRunSpec)
    spec_schema["description"] = "What to run and which data it reads and writes. Not changed after the run starts."
    status_schema = object_schema(models.DataRunStatus)
    status_schema["description"] = "Written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "datarun", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["datarun"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Outputs", "type": "string", "jsonPath": ".status.outputSummary"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
                        {"name": "Pod", "type": "string", "jsonPath": ".status.podName", "priority": 1},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "A job run with versioned inputs and outputs (datarun bundles).",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datarun_operator.crd", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed CRD is stale")
    parser.add_argument("--stdout", action="store_true", help="print the CRD instead of writing it")
    parser.add_argument("--output", type=Path, default=CRD_PATH, help=f"where to write (default: {CRD_PATH})")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        try:
            current = args.output.read_text()
        except OSError as err:
            print(
                f"crd: cannot read `{args.output}`: {err.strerror}; run `python -m datarun_operator.crd`",
                file=sys.stderr,
            )
            return 1
        if current != text:
            print(
                f"crd: `{args.output}` is stale (the models changed); run `python -m datarun_operator.crd`",
                file=sys.stderr,
            )
            return 1
        print(f"crd: `{args.output}` is current")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"crd: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
