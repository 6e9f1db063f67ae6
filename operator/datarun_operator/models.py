"""The ``DataRun`` resource (``datarun.io/v1alpha1``) as frozen, typed records.

One set of declarations serves three purposes: :func:`parse` turns the API's JSON into these
records (raising :class:`SpecError` that names the field, e.g. ``spec.inputs[1].label``),
:mod:`datarun_operator.crd` walks the same declarations to generate the CRD's OpenAPI schema,
and :func:`dump` turns records back into JSON for status patches. A field's schema facts
(description, pattern, bounds, CEL rules) live next to it in an ``Annotated[..., F(...)]``.

Patterns are written in the common subset of Python ``re`` and RE2 (no look-arounds), so the
apiserver and this module enforce the very same name rules as :mod:`datarun.model`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar, Union

GROUP = "datarun.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DataRun"
PLURAL = "dataruns"
SINGULAR = "datarun"
SHORT_NAMES = ("dr",)

DATA_ROOT = "/data"
"""Where inputs and outputs live in the app's container: a relative ``path`` is ``/data/<path>``."""

MAX_RUN_NAME = 63
"""A DataRun's name is a label value on its pod (``datarun.io/run``), so at most 63 characters."""

# -- name rules (RE2-compatible; the same sets as datarun.model.validate_*) -------------------

NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Names of inputs, outputs and databases: DNS labels, so they also work as env var suffixes."""
REPO_PATTERN = r"^[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?$"
"""datarun.model.validate_repo_name: lowercase letters, digits, ``._-``; no ``..``; at most 63."""
LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
"""datarun.model.validate_label_name: letters, digits, ``._-``; no ``..``; at most 128."""
BUNDLE_PATTERN = r"^[0-9A-Za-z]{27}$"
"""A bundle id (KSUID, datarun.ids.KSUID_RE)."""
_SEGMENT = r"([A-Za-z0-9_@+=,~-][A-Za-z0-9._@+=,~-]*|\.[A-Za-z0-9_@+=,~-][A-Za-z0-9._@+=,~-]*|\.\.[A-Za-z0-9._@+=,~-]+)"
PATH_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"
"""A relative path under /data: no leading ``/``, no ``.``/``..`` or empty components, no spaces."""
ABSOLUTE_PATH_PATTERN = rf"^/({_SEGMENT}(/{_SEGMENT})*)?$"
"""An absolute path in the app's container, with the same component rules as PATH_PATTERN."""
PARAMS_FILE = "params.json"
"""The file in the app's working folder that holds ``spec.params`` as one JSON object."""
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
"""Kubernetes' rule for environment variable names."""
PARAM_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Param keys become ``DATARUN_PARAM_<key>`` and can be used in args as ``$(DATARUN_PARAM_<key>)``."""
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A Kubernetes resource quantity (``500m``, ``2Gi``, ``1``), as controller-gen writes it."""
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # noqa: S105 (a name rule)
"""A DNS subdomain, the name rule of a Secret."""
RESERVED_ENV_PREFIX = "DATARUN_"


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
class F:
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


class InputMode(StrEnum):
    MOUNT = "mount"
    DOWNLOAD = "download"


class CacheMedium(StrEnum):
    DISK = "Disk"
    MEMORY = "Memory"


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    UPLOADING = "Uploading"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)

    @property
    def rank(self) -> int:
        """Phases only move forward: Pending < Running < Uploading < Succeeded = Failed."""
        return {"Pending": 0, "Running": 1, "Uploading": 2, "Succeeded": 3, "Failed": 3}[self.value]


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# -- spec -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EnvVar:
    CEL: ClassVar[tuple[Rule, ...]] = (
        Rule("!(has(self.value) && has(self.valueFrom))", "give at most one of `value` or `valueFrom`", ".valueFrom"),
    )

    name: Annotated[str, F("Variable name.", pattern=ENV_NAME_PATTERN, max_length=253)]
    value: Annotated[str | None, F("Literal value.")] = None
    value_from: Annotated[
        dict[str, Any] | None, F("A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).")
    ] = None


@dataclass(frozen=True, kw_only=True)
class Resources:
    requests: Annotated[
        dict[str, str],
        F("Minimum resources (cpu, memory, ...).", item_pattern=QUANTITY_PATTERN, item_int_or_string=True),
    ] = field(default_factory=dict)
    limits: Annotated[
        dict[str, str],
        F("Maximum resources (cpu, memory, ...).", item_pattern=QUANTITY_PATTERN, item_int_or_string=True),
    ] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Input:
    CEL: ClassVar[tuple[Rule, ...]] = (
        Rule("has(self.label) != has(self.bundle)", "give exactly one of `label` or `bundle`", ".label"),
    )

    name: Annotated[str, F("Name of the input, unique in the DataRun; env DATARUN_INPUT_<NAME>.", pattern=NAME_PATTERN)]
    repo: Annotated[str, F("Repo to read from.", pattern=REPO_PATTERN, max_length=63)]
    label: Annotated[
        str | None,
        F("Label to read; pinned to a bundle id when the run starts.", pattern=LABEL_PATTERN, max_length=128),
    ] = None
    bundle: Annotated[str | None, F("Bundle id to read.", pattern=BUNDLE_PATTERN)] = None
    path: Annotated[
        str, F(f"Where the app sees the input, relative to {DATA_ROOT}.", pattern=PATH_PATTERN, max_length=255)
    ]
    mode: Annotated[
        InputMode, F("`mount` streams files on demand (FUSE); `download` copies the bundle before the app starts.")
    ] = InputMode.MOUNT


@dataclass(frozen=True, kw_only=True)
class Output:
    name: Annotated[
        str, F("Name of the output, unique in the DataRun; env DATARUN_OUTPUT_<NAME>.", pattern=NAME_PATTERN)
    ]
    repo: Annotated[str, F("Repo to upload to.", pattern=REPO_PATTERN, max_length=63)]
    path: Annotated[str, F(f"Folder the app writes, relative to {DATA_ROOT}.", pattern=PATH_PATTERN, max_length=255)]
    label: Annotated[str | None, F("Label to move to the new bundle.", pattern=LABEL_PATTERN, max_length=128)] = None
    message: Annotated[str | None, F("Bundle message (default: names the DataRun).", max_length=1024)] = None
    upload_on_failure: Annotated[bool, F("Upload even when the app fails (default: only on success).")] = False


@dataclass(frozen=True, kw_only=True)
class Database:
    CEL: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.sourceLabel) && has(self.sourceBundle))",
            "give at most one of `sourceLabel` or `sourceBundle`",
            ".sourceBundle",
        ),
        Rule(
            "has(self.sourceRepo) == (has(self.sourceLabel) || has(self.sourceBundle))",
            "`sourceRepo` goes with one of `sourceLabel` or `sourceBundle`",
            ".sourceRepo",
        ),
        Rule("!has(self.outputLabel) || has(self.outputRepo)", "`outputLabel` needs `outputRepo`", ".outputLabel"),
    )

    name: Annotated[str, F("Name of the database, unique in the DataRun.", pattern=NAME_PATTERN)]
    port: Annotated[int, F("Port the server listens on (127.0.0.1 in the pod).", minimum=1, maximum=65535)]
    source_repo: Annotated[
        str | None, F("Repo of the dump to restore (empty database if unset).", pattern=REPO_PATTERN, max_length=63)
    ] = None
    source_label: Annotated[
        str | None,
        F("Label of the dump to restore; pinned when the run starts.", pattern=LABEL_PATTERN, max_length=128),
    ] = None
    source_bundle: Annotated[str | None, F("Bundle id of the dump to restore.", pattern=BUNDLE_PATTERN)] = None
    output_repo: Annotated[
        str | None, F("Repo to upload the dump to after a successful app.", pattern=REPO_PATTERN, max_length=63)
    ] = None
    output_label: Annotated[
        str | None, F("Label to move to the uploaded dump.", pattern=LABEL_PATTERN, max_length=128)
    ] = None
    output_message: Annotated[str | None, F("Bundle message of the dump.", max_length=1024)] = None


@dataclass(frozen=True, kw_only=True)
class StoreOverride:
    url: Annotated[str, F("Store URL for this run (file://, az://, gs://).", min_length=1, max_length=2048)]
    credentials_secret: Annotated[
        str | None,
        F("Secret in the DataRun's namespace with the store credentials.", pattern=SECRET_NAME_PATTERN, max_length=253),
    ] = None


@dataclass(frozen=True, kw_only=True)
class Cache:
    size_limit: Annotated[
        str | None,
        F("Size limit of the sidecars' chunk cache (an emptyDir).", pattern=QUANTITY_PATTERN, int_or_string=True),
    ] = None
    medium: Annotated[CacheMedium, F("`Disk` (node storage) or `Memory` (tmpfs, counts against memory).")] = (
        CacheMedium.DISK
    )


@dataclass(frozen=True, kw_only=True)
class DataRunSpec:
    image: Annotated[str, F("Image of the app; it needs /bin/sh for the wrapper.", min_length=1)]
    command: Annotated[tuple[str, ...], F("The app's command (the image's entrypoint is not used).", min_items=1)]
    args: Annotated[tuple[str, ...], F("Arguments after the command; $(VAR) expands env vars.")] = ()
    env: Annotated[tuple[EnvVar, ...], F("Environment of the app.", list_map_key="name", max_items=256)] = ()
    resources: Annotated[Resources | None, F("Resources of the app's container.")] = None
    params: Annotated[
        dict[str, Any],
        F(
            f"Parameters: any JSON values, mounted as one object in {PARAMS_FILE} in the working folder and recorded "
            "in the run record; string values are also passed as env DATARUN_PARAM_<key>.",
            key_pattern=PARAM_KEY_PATTERN,
        ),
    ] = field(default_factory=dict)
    working_dir: Annotated[
        str,
        F(
            f"The app's working folder, where {PARAMS_FILE} is (default {DATA_ROOT}: the inputs and outputs).",
            pattern=ABSOLUTE_PATH_PATTERN,
            max_length=255,
        ),
    ] = DATA_ROOT
    inputs: Annotated[tuple[Input, ...], F("Bundles to read.", list_map_key="name", max_items=64)] = ()
    outputs: Annotated[tuple[Output, ...], F("Folders to upload as bundles.", list_map_key="name", max_items=64)] = ()
    databases: Annotated[
        tuple[Database, ...], F("PostgreSQL databases served next to the app.", list_map_key="name", max_items=16)
    ] = ()
    store: Annotated[StoreOverride | None, F("Use another store than the operator's default.")] = None
    cache: Annotated[Cache | None, F("The sidecars' chunk cache.")] = None

    def check(self, where: str = "spec") -> None:
        """The rules the schema cannot state (or states only with CEL); raises SpecError."""
        seen: dict[str, str] = {}
        names = [
            *((f"{where}.inputs[{i}].name", x.name) for i, x in enumerate(self.inputs)),
            *((f"{where}.outputs[{i}].name", x.name) for i, x in enumerate(self.outputs)),
            *((f"{where}.databases[{i}].name", x.name) for i, x in enumerate(self.databases)),
        ]
        for here, name in names:
            if name in seen:
                raise SpecError(here, f"duplicate name `{name}` (also {seen[name]})")
            seen[name] = here
        for index, env in enumerate(self.env):
            if env.name.startswith(RESERVED_ENV_PREFIX):
                raise SpecError(
                    f"{where}.env[{index}].name",
                    f"`{env.name}`: names starting with {RESERVED_ENV_PREFIX} are reserved",
                )
            if env.value is not None and env.value_from is not None:
                raise SpecError(f"{where}.env[{index}].valueFrom", "give at most one of `value` or `valueFrom`")
        for index, inp in enumerate(self.inputs):
            if (inp.label is None) == (inp.bundle is None):
                raise SpecError(f"{where}.inputs[{index}].label", "give exactly one of `label` or `bundle`")
        for index, db in enumerate(self.databases):
            here = f"{where}.databases[{index}]"
            if db.source_label is not None and db.source_bundle is not None:
                raise SpecError(f"{here}.sourceBundle", "give at most one of `sourceLabel` or `sourceBundle`")
            has_source = db.source_label is not None or db.source_bundle is not None
            if (db.source_repo is not None) != has_source:
                raise SpecError(f"{here}.sourceRepo", "`sourceRepo` goes with one of `sourceLabel` or `sourceBundle`")
            if db.output_label is not None and db.output_repo is None:
                raise SpecError(f"{here}.outputLabel", "`outputLabel` needs `outputRepo`")
        ports: dict[int, int] = {}
        for index, db in enumerate(self.databases):
            if db.port in ports:
                raise SpecError(
                    f"{where}.databases[{index}].port", f"port {db.port} is also used by databases[{ports[db.port]}]"
                )
            ports[db.port] = index
        paths: list[tuple[str, str]] = [
            *((f"{where}.inputs[{i}].path", x.path) for i, x in enumerate(self.inputs)),
            *((f"{where}.outputs[{i}].path", x.path) for i, x in enumerate(self.outputs)),
        ]
        for i, (here, path) in enumerate(paths):
            for other, other_path in paths[:i]:
                if path == other_path:
                    raise SpecError(here, f"`{path}` is also {other}")
                if path.startswith(other_path + "/") or other_path.startswith(path + "/"):
                    raise SpecError(here, f"`{path}` and `{other_path}` ({other}) are nested; paths must not overlap")


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OutputStatus:
    name: Annotated[str, F("The output (or database) name.")]
    repo: Annotated[str, F("Repo of the bundle.")]
    bundle: Annotated[str, F("Id of the uploaded bundle; empty if none was uploaded.")] = ""
    label: Annotated[str, F("Label moved to the bundle.")] = ""
    error: Annotated[str, F("Why the upload failed, or was skipped.")] = ""


@dataclass(frozen=True, kw_only=True)
class Condition:
    type: Annotated[str, F("Condition type: InputsPinned, PodCreated, AppCompleted, OutputsUploaded.")]
    status: Annotated[ConditionStatus, F("True, False or Unknown.")]
    reason: Annotated[str, F("CamelCase reason.")] = ""
    message: Annotated[str, F("Human-readable details.")] = ""
    last_transition_time: Annotated[str | None, F("When the status last changed.", date_time=True)] = None


@dataclass(frozen=True, kw_only=True)
class DataRunStatus:
    phase: Annotated[Phase | None, F("Pending, Running, Uploading, Succeeded or Failed.")] = None
    reason: Annotated[str | None, F("CamelCase reason of the phase.")] = None
    message: Annotated[str | None, F("Human-readable details of the phase.")] = None
    pinned_inputs: Annotated[
        dict[str, str], F("Bundle id of every input and database source, pinned when the run started.")
    ] = field(default_factory=dict)
    outputs: Annotated[tuple[OutputStatus, ...], F("Uploaded bundles.")] = ()
    output_summary: Annotated[str | None, F("Outputs in one line, for `kubectl get`.")] = None
    pod_name: Annotated[str | None, F("The pod that runs the app.")] = None
    app_exit_code: Annotated[int | None, F("The app's exit code, once it has ended.")] = None
    start_time: Annotated[str | None, F("When the pod started.", date_time=True)] = None
    completion_time: Annotated[str | None, F("When the run ended.", date_time=True)] = None
    observed_generation: Annotated[int | None, F("The spec generation this status describes.")] = None
    run_record: Annotated[
        str | None, F("Id of the run record in the store (`datarun run show ID`), written when inputs are pinned.")
    ] = None
    conditions: Annotated[tuple[Condition, ...], F("Conditions.", list_map_key="type")] = ()


@dataclass(frozen=True, kw_only=True)
class DataRun:
    """A whole resource: identity from ``metadata``, a checked spec, and the status."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: DataRunSpec
    status: DataRunStatus
    created: str = ""
    """``metadata.creationTimestamp``: with the uid, it makes the run record's id (datarun_operator.runrecord)."""

    @staticmethod
    def from_body(body: Mapping[str, Any]) -> DataRun:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if len(name) > MAX_RUN_NAME:
            raise SpecError("metadata.name", f"at most {MAX_RUN_NAME} characters (it labels the pod)")
        return DataRun(
            name=name,
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=parse_spec(body.get("spec")),
            status=parse_status(body.get("status")),
            created=str(meta.get("creationTimestamp") or ""),
        )


def parse_spec(raw: object, where: str = "spec") -> DataRunSpec:
    """Parse and check a spec; every problem is a SpecError naming the field."""
    spec = parse(DataRunSpec, raw, where)
    spec.check(where)
    return spec


def parse_status(raw: object) -> DataRunStatus:
    """Parse a status written by this (or a newer) operator: unknown keys are ignored."""
    return parse(DataRunStatus, raw or {}, "status", allow_unknown=True)


# -- the generic machinery --------------------------------------------------------------------

T = TypeVar("T")


def json_name(f: dataclasses.Field[Any], meta: F | None) -> str:
    if meta is not None and meta.json_name:
        return meta.json_name
    head, *rest = f.name.split("_")
    return head + "".join(part.title() for part in rest)


def unwrap(tp: Any) -> tuple[Any, F | None]:
    """``Annotated[X | None, F]`` -> (X, F). Optional fields are the ones with a default."""
    meta: F | None = None
    if typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        meta = next((a for a in args[1:] if isinstance(a, F)), None)
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported union {tp}")
        tp = members[0]
    return tp, meta


def fields_of(cls: type) -> list[tuple[dataclasses.Field[Any], Any, F | None]]:
    """(field, type, schema facts) of a model, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f, *unwrap(hints[f.name])) for f in dataclasses.fields(cls)]


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


def _scalar(tp: Any, meta: F | None, raw: object, where: str, *, pattern: str | None, int_or_string: bool) -> Any:
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        allowed = [m.value for m in tp]
        if raw not in allowed:
            raise SpecError(where, f"must be one of {', '.join(allowed)} (got {raw!r})")
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
            raise SpecError(where, "must not be empty" if meta.min_length == 1 else f"at least {meta.min_length} chars")
        if meta is not None and meta.max_length is not None and len(raw) > meta.max_length:
            raise SpecError(where, f"at most {meta.max_length} characters (got {len(raw)})")
        if pattern is not None and not re.match(pattern, raw):
            raise SpecError(where, f"{raw!r} is not valid ({_pattern_hint(pattern)})")
        return raw
    if tp is Any:
        return raw
    raise TypeError(f"unsupported field type {tp!r}")


def _pattern_hint(pattern: str) -> str:
    return {
        NAME_PATTERN: "use lowercase letters, digits and `-`, starting with a letter, at most 63",
        REPO_PATTERN: "use lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`",
        LABEL_PATTERN: "use letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`",
        BUNDLE_PATTERN: "a bundle id is 27 letters and digits, as printed by upload",
        PATH_PATTERN: f"a relative path under {DATA_ROOT}: no leading `/`, no `.` or `..` parts, no spaces",
        ABSOLUTE_PATH_PATTERN: "an absolute path: a leading `/`, no `.` or `..` parts, no spaces",
        ENV_NAME_PATTERN: "letters, digits, `_`, `-` or `.`, not starting with a digit",
        PARAM_KEY_PATTERN: "letters, digits and `_`, not starting with a digit",
        QUANTITY_PATTERN: "a quantity such as 500m, 2Gi or 1",
        SECRET_NAME_PATTERN: "a Secret name: lowercase letters, digits, `-` and `.`",
    }.get(pattern, f"must match {pattern}")


def _value(tp: Any, meta: F | None, raw: object, where: str, allow_unknown: bool) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse(tp, raw, where, allow_unknown=allow_unknown)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(raw, list):
            raise SpecError(where, f"must be a list, not {_type_name(raw)}")
        if meta is not None and meta.min_items is not None and len(raw) < meta.min_items:
            raise SpecError(where, "must not be empty" if meta.min_items == 1 else f"needs {meta.min_items} items")
        if meta is not None and meta.max_items is not None and len(raw) > meta.max_items:
            raise SpecError(where, f"at most {meta.max_items} items (got {len(raw)})")
        items = tuple(_item(item_tp, meta, item, f"{where}[{i}]", allow_unknown) for i, item in enumerate(raw))
        if meta is not None and meta.list_map_key:
            key = meta.list_map_key
            seen: dict[object, int] = {}
            for i, item in enumerate(items):
                value = getattr(item, key)
                if value in seen:
                    raise SpecError(f"{where}[{i}].{key}", f"duplicate {key} `{value}` (also {where}[{seen[value]}])")
                seen[value] = i
        return items
    if origin is dict:
        _key_tp, item_tp = typing.get_args(tp)
        if not isinstance(raw, dict):
            raise SpecError(where, f"must be an object, not {_type_name(raw)}")
        if item_tp is Any:
            if meta is not None and meta.key_pattern is not None:
                for key in raw:
                    if not re.match(meta.key_pattern, str(key)):
                        raise SpecError(
                            f"{where}.{key}", f"key {key!r} is not valid ({_pattern_hint(meta.key_pattern)})"
                        )
            return dict(raw)
        out = {}
        for key, item in raw.items():
            if meta is not None and meta.key_pattern is not None and not re.match(meta.key_pattern, str(key)):
                raise SpecError(f"{where}.{key}", f"key {key!r} is not valid ({_pattern_hint(meta.key_pattern)})")
            out[str(key)] = _item(item_tp, meta, item, f"{where}.{key}", allow_unknown)
        return out
    return _scalar(
        tp, meta, raw, where, pattern=meta.pattern if meta else None, int_or_string=bool(meta and meta.int_or_string)
    )


def _item(tp: Any, meta: F | None, raw: object, where: str, allow_unknown: bool) -> Any:
    if dataclasses.is_dataclass(tp):
        return _value(tp, None, raw, where, allow_unknown)
    item_meta = F("", pattern=meta.item_pattern if meta else None)
    return _scalar(
        tp, item_meta, raw, where, pattern=item_meta.pattern, int_or_string=bool(meta and meta.item_int_or_string)
    )


def parse(cls: type[T], raw: object, where: str, *, allow_unknown: bool = False) -> T:
    """Build ``cls`` from JSON, checking types, patterns and bounds; SpecError names the field."""
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
        kwargs[f.name] = _value(tp, meta, raw[name], here, allow_unknown)
    return cls(**kwargs)


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
