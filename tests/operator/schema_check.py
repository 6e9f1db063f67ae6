"""A small checker for the CRD's OpenAPI schema, so its behaviour is tested without an apiserver.

It applies the keywords the CRD uses (type, enum, required, pattern, bounds, list-map keys,
int-or-string) and evaluates its CEL rules, which only use has(), !, &&, || and ==/!=.
Errors read like the apiserver's: ``<field path>: <what>``.
"""

from __future__ import annotations

import re
from typing import Any

from datarun_operator import crd


def schema() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    out: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return out


def _cel(rule: str, obj: dict[str, Any]) -> bool:
    expr = re.sub(r"has\(self\.(\w+)\)", r'_has("\1")', rule)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    return bool(eval(expr, {"_has": lambda key: key in obj}))


def validate(s: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors as ``<path>: <what>``, like the apiserver's field paths."""
    errors: list[str] = []
    if s.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            return [f"{path}: must be an integer or a string"]
        if isinstance(value, str) and "pattern" in s and not re.match(s["pattern"], value):
            errors.append(f"{path}: does not match {s['pattern']}")
        return errors
    kind = s.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    if kind in types and (not isinstance(value, types[kind]) or (kind == "integer" and isinstance(value, bool))):
        return [f"{path}: must be {kind}"]
    if "enum" in s and value not in s["enum"]:
        errors.append(f"{path}: Unsupported value {value!r}")
    if kind == "string":
        if "pattern" in s and not re.match(s["pattern"], value):
            errors.append(f"{path}: does not match {s['pattern']}")
        if len(value) < s.get("minLength", 0) or len(value) > s.get("maxLength", 1 << 30):
            errors.append(f"{path}: bad length")
    if kind == "integer" and (value < s.get("minimum", -(1 << 62)) or value > s.get("maximum", 1 << 62)):
        errors.append(f"{path}: out of range")
    if kind == "array":
        if len(value) < s.get("minItems", 0) or len(value) > s.get("maxItems", 1 << 30):
            errors.append(f"{path}: bad number of items")
        for i, item in enumerate(value):
            errors += validate(s["items"], item, f"{path}[{i}]")
        for key in s.get("x-kubernetes-list-map-keys", []):
            seen = [item.get(key) for item in value if isinstance(item, dict)]
            for i, k in enumerate(seen):
                if k in seen[:i]:
                    errors.append(f"{path}[{i}]: Duplicate value")
    if kind == "object":
        for name in s.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: Required value")
        for name, item in value.items():
            if name in s.get("properties", {}):
                errors += validate(s["properties"][name], item, f"{path}.{name}")
            elif isinstance(s.get("additionalProperties"), dict):
                errors += validate(s["additionalProperties"], item, f"{path}.{name}")
        for rule in s.get("x-kubernetes-validations", []):
            if not _cel(rule["rule"], value):
                errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    return errors
