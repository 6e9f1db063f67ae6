"""The ``DataRun`` resource (``datarun.io/v1alpha1``) as frozen, typed records.

One set of declarations serves three purposes: :func:`parse_spec` and :func:`parse_status` turn
the API's JSON into these records (raising :class:`SpecError` that names the field, e.g.
``spec.inputs[1].label``), :mod:`datarun_operator.crd` walks the same declarations to generate
the CRD's OpenAPI schema, and :func:`datarun_operator.schema.dump` turns records back into JSON
for status patches. A field's schema facts (description, pattern, bounds, CEL rules) live next to
it in an ``Annotated[..., FieldSchema(...)]``; the generic engine that reads them is
:mod:`datarun_operator.schema`.

Patterns are written in the common subset of Python ``re`` and RE2 (no look-arounds), so the
apiserver and this module enforce the very same name rules as :mod:`datarun.model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from datarun_operator.patterns import (  # re-exported: the name rules are part of the models' API
    ABSOLUTE_PATH_PATTERN as ABSOLUTE_PATH_PATTERN,
    BUNDLE_PATTERN as BUNDLE_PATTERN,
    DATA_ROOT as DATA_ROOT,
    ENV_NAME_PATTERN as ENV_NAME_PATTERN,
    LABEL_PATTERN as LABEL_PATTERN,
    NAME_PATTERN as NAME_PATTERN,
    PARAM_KEY_PATTERN as PARAM_KEY_PATTERN,
    PARAMS_FILE as PARAMS_FILE,
    PATH_PATTERN as PATH_PATTERN,
    PATTERN_HINTS as PATTERN_HINTS,
    QUANTITY_PATTERN as QUANTITY_PATTERN,
    REPO_PATTERN as REPO_PATTERN,
    RESERVED_ENV_PREFIX as RESERVED_ENV_PREFIX,
    SECRET_NAME_PATTERN as SECRET_NAME_PATTERN,
)
from datarun_operator.schema import (
    FieldSchema,
    RecordCodec,
    Rule,
    SpecError as SpecError,  # re-exported: a spec's error is part of the models' API
)

GROUP = "datarun.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DataRun"
PLURAL = "dataruns"
SINGULAR = "datarun"
SHORT_NAMES = ("dr",)


MAX_RUN_NAME = 63
"""A DataRun's name is a label value on its pod (``datarun.io/run``), so at most 63 characters."""

CODEC = RecordCodec(pattern_hints=PATTERN_HINTS)


class InputMode(StrEnum):
    MOUNT = "mount"
    DOWNLOAD = "download"


class OnInputInvalidated(StrEnum):
    """What a finished run does when one of its inputs is invalidated later (issue 13):
    `ignore` only marks it (condition Invalidated), `rerun` also creates a new DataRun that
    re-pins the labels."""

    IGNORE = "ignore"
    RERUN = "rerun"


class CacheMedium(StrEnum):
    DISK = "Disk"
    MEMORY = "Memory"


class CachePolicy(StrEnum):
    """The run cache (FORMAT.md §15): `use` reuses an identical earlier run, `refresh` runs
    anyway and records, `off` neither looks up nor records."""

    USE = "use"
    REFRESH = "refresh"
    OFF = "off"


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

    name: Annotated[str, FieldSchema("Variable name.", pattern=ENV_NAME_PATTERN, max_length=253)]
    value: Annotated[str | None, FieldSchema("Literal value.")] = None
    value_from: Annotated[
        dict[str, Any] | None, FieldSchema("A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).")
    ] = None


@dataclass(frozen=True, kw_only=True)
class Resources:
    requests: Annotated[
        dict[str, str],
        FieldSchema("Minimum resources (cpu, memory, ...).", item_pattern=QUANTITY_PATTERN, item_int_or_string=True),
    ] = field(default_factory=dict)
    limits: Annotated[
        dict[str, str],
        FieldSchema("Maximum resources (cpu, memory, ...).", item_pattern=QUANTITY_PATTERN, item_int_or_string=True),
    ] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Input:
    CEL: ClassVar[tuple[Rule, ...]] = (
        Rule("has(self.label) != has(self.bundle)", "give exactly one of `label` or `bundle`", ".label"),
    )

    name: Annotated[
        str, FieldSchema("Name of the input, unique in the DataRun; env DATARUN_INPUT_<NAME>.", pattern=NAME_PATTERN)
    ]
    repo: Annotated[str, FieldSchema("Repo to read from.", pattern=REPO_PATTERN, max_length=63)]
    label: Annotated[
        str | None,
        FieldSchema("Label to read; pinned to a bundle id when the run starts.", pattern=LABEL_PATTERN, max_length=128),
    ] = None
    bundle: Annotated[str | None, FieldSchema("Bundle id to read.", pattern=BUNDLE_PATTERN)] = None
    path: Annotated[
        str,
        FieldSchema(f"Where the app sees the input, relative to {DATA_ROOT}.", pattern=PATH_PATTERN, max_length=255),
    ]
    mode: Annotated[
        InputMode,
        FieldSchema("`mount` streams files on demand (FUSE); `download` copies the bundle before the app starts."),
    ] = InputMode.MOUNT
    allow_invalid: Annotated[
        bool,
        FieldSchema(
            "Start even if the pinned bundle was invalidated (`datarun invalidate`), like --allow-invalid; "
            "by default such a run fails with reason InputInvalid."
        ),
    ] = False


@dataclass(frozen=True, kw_only=True)
class Output:
    name: Annotated[
        str, FieldSchema("Name of the output, unique in the DataRun; env DATARUN_OUTPUT_<NAME>.", pattern=NAME_PATTERN)
    ]
    repo: Annotated[str, FieldSchema("Repo to upload to.", pattern=REPO_PATTERN, max_length=63)]
    path: Annotated[
        str, FieldSchema(f"Folder the app writes, relative to {DATA_ROOT}.", pattern=PATH_PATTERN, max_length=255)
    ]
    label: Annotated[
        str | None, FieldSchema("Label to move to the new bundle.", pattern=LABEL_PATTERN, max_length=128)
    ] = None
    message: Annotated[str | None, FieldSchema("Bundle message (default: names the DataRun).", max_length=1024)] = None
    upload_on_failure: Annotated[bool, FieldSchema("Upload even when the app fails (default: only on success).")] = (
        False
    )


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

    name: Annotated[str, FieldSchema("Name of the database, unique in the DataRun.", pattern=NAME_PATTERN)]
    port: Annotated[int, FieldSchema("Port the server listens on (127.0.0.1 in the pod).", minimum=1, maximum=65535)]
    source_repo: Annotated[
        str | None,
        FieldSchema("Repo of the dump to restore (empty database if unset).", pattern=REPO_PATTERN, max_length=63),
    ] = None
    source_label: Annotated[
        str | None,
        FieldSchema("Label of the dump to restore; pinned when the run starts.", pattern=LABEL_PATTERN, max_length=128),
    ] = None
    source_bundle: Annotated[str | None, FieldSchema("Bundle id of the dump to restore.", pattern=BUNDLE_PATTERN)] = (
        None
    )
    output_repo: Annotated[
        str | None,
        FieldSchema("Repo to upload the dump to after a successful app.", pattern=REPO_PATTERN, max_length=63),
    ] = None
    output_label: Annotated[
        str | None, FieldSchema("Label to move to the uploaded dump.", pattern=LABEL_PATTERN, max_length=128)
    ] = None
    output_message: Annotated[str | None, FieldSchema("Bundle message of the dump.", max_length=1024)] = None


@dataclass(frozen=True, kw_only=True)
class StoreOverride:
    url: Annotated[str, FieldSchema("Store URL for this run (file://, az://, gs://).", min_length=1, max_length=2048)]
    credentials_secret: Annotated[
        str | None,
        FieldSchema(
            "Secret in the DataRun's namespace with the store credentials.", pattern=SECRET_NAME_PATTERN, max_length=253
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class Cache:
    size_limit: Annotated[
        str | None,
        FieldSchema(
            "Size limit of the sidecars' chunk cache (an emptyDir).", pattern=QUANTITY_PATTERN, int_or_string=True
        ),
    ] = None
    medium: Annotated[CacheMedium, FieldSchema("`Disk` (node storage) or `Memory` (tmpfs, counts against memory).")] = (
        CacheMedium.DISK
    )
    policy: Annotated[
        CachePolicy,
        FieldSchema(
            "The run cache: `use` skips the run (no pod) when an identical run succeeded and its outputs exist; "
            "`refresh` runs anyway and records; `off` neither looks up nor records."
        ),
    ] = CachePolicy.USE
    version: Annotated[
        str, FieldSchema("A salt in the run cache's key: change it to make every earlier run miss.", max_length=256)
    ] = ""
    trust_tags: Annotated[
        bool,
        FieldSchema(
            "Let a bare image tag (no @sha256: digest) be part of the key; otherwise a tag-only image always misses."
        ),
    ] = False


@dataclass(frozen=True, kw_only=True)
class DataRunSpec:
    image: Annotated[str, FieldSchema("Image of the app; it needs /bin/sh for the wrapper.", min_length=1)]
    command: Annotated[
        tuple[str, ...], FieldSchema("The app's command (the image's entrypoint is not used).", min_items=1)
    ]
    args: Annotated[tuple[str, ...], FieldSchema("Arguments after the command; $(VAR) expands env vars.")] = ()
    env: Annotated[tuple[EnvVar, ...], FieldSchema("Environment of the app.", list_map_key="name", max_items=256)] = ()
    resources: Annotated[Resources | None, FieldSchema("Resources of the app's container.")] = None
    params: Annotated[
        dict[str, Any],
        FieldSchema(
            f"Parameters: any JSON values, mounted as one object in {PARAMS_FILE} in the working folder and recorded "
            "in the run record; string values are also passed as env DATARUN_PARAM_<key>.",
            key_pattern=PARAM_KEY_PATTERN,
        ),
    ] = field(default_factory=dict)
    working_dir: Annotated[
        str,
        FieldSchema(
            f"The app's working folder, where {PARAMS_FILE} is (default {DATA_ROOT}: the inputs and outputs).",
            pattern=ABSOLUTE_PATH_PATTERN,
            max_length=255,
        ),
    ] = DATA_ROOT
    inputs: Annotated[tuple[Input, ...], FieldSchema("Bundles to read.", list_map_key="name", max_items=64)] = ()
    outputs: Annotated[
        tuple[Output, ...], FieldSchema("Folders to upload as bundles.", list_map_key="name", max_items=64)
    ] = ()
    databases: Annotated[
        tuple[Database, ...],
        FieldSchema("PostgreSQL databases served next to the app.", list_map_key="name", max_items=16),
    ] = ()
    store: Annotated[StoreOverride | None, FieldSchema("Use another store than the operator's default.")] = None
    cache: Annotated[Cache | None, FieldSchema("The sidecars' chunk cache, and the run cache's policy.")] = None
    on_input_invalidated: Annotated[
        OnInputInvalidated,
        FieldSchema(
            "When an input of the finished run is invalidated later: `ignore` (the default) sets the condition "
            "Invalidated; `rerun` also creates a new DataRun (label datarun.io/rerun-of) that re-pins the labels."
        ),
    ] = OnInputInvalidated.IGNORE

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
    name: Annotated[str, FieldSchema("The output (or database) name.")]
    repo: Annotated[str, FieldSchema("Repo of the bundle.")]
    bundle: Annotated[str, FieldSchema("Id of the uploaded bundle; empty if none was uploaded.")] = ""
    label: Annotated[str, FieldSchema("Label moved to the bundle.")] = ""
    error: Annotated[str, FieldSchema("Why the upload failed, or was skipped.")] = ""


@dataclass(frozen=True, kw_only=True)
class Condition:
    type: Annotated[str, FieldSchema("Condition type: InputsPinned, PodCreated, AppCompleted, OutputsUploaded.")]
    status: Annotated[ConditionStatus, FieldSchema("True, False or Unknown.")]
    reason: Annotated[str, FieldSchema("CamelCase reason.")] = ""
    message: Annotated[str, FieldSchema("Human-readable details.")] = ""
    last_transition_time: Annotated[str | None, FieldSchema("When the status last changed.", date_time=True)] = None


@dataclass(frozen=True, kw_only=True)
class DataRunStatus:
    phase: Annotated[Phase | None, FieldSchema("Pending, Running, Uploading, Succeeded or Failed.")] = None
    reason: Annotated[str | None, FieldSchema("CamelCase reason of the phase.")] = None
    message: Annotated[str | None, FieldSchema("Human-readable details of the phase.")] = None
    pinned_inputs: Annotated[
        dict[str, str], FieldSchema("Bundle id of every input and database source, pinned when the run started.")
    ] = field(default_factory=dict)
    outputs: Annotated[tuple[OutputStatus, ...], FieldSchema("Uploaded bundles.")] = ()
    output_summary: Annotated[str | None, FieldSchema("Outputs in one line, for `kubectl get`.")] = None
    pod_name: Annotated[str | None, FieldSchema("The pod that runs the app.")] = None
    app_exit_code: Annotated[int | None, FieldSchema("The app's exit code, once it has ended.")] = None
    start_time: Annotated[str | None, FieldSchema("When the pod started.", date_time=True)] = None
    completion_time: Annotated[str | None, FieldSchema("When the run ended.", date_time=True)] = None
    observed_generation: Annotated[int | None, FieldSchema("The spec generation this status describes.")] = None
    run_record: Annotated[
        str | None,
        FieldSchema("Id of the run record in the store (`datarun run show ID`), written when inputs are pinned."),
    ] = None
    cache_key: Annotated[
        str | None, FieldSchema("The run cache key (`datarun run explain-cache --run <runRecord>` shows its parts).")
    ] = None
    cached_from: Annotated[
        str | None, FieldSchema("A cache hit: the earlier run (record id) whose outputs this run reused.")
    ] = None
    conditions: Annotated[tuple[Condition, ...], FieldSchema("Conditions.", list_map_key="type")] = ()


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
    spec = CODEC.parse(DataRunSpec, raw, where)
    spec.check(where)
    return spec


def parse_status(raw: object) -> DataRunStatus:
    """Parse a status written by this (or a newer) operator: unknown keys are ignored."""
    return CODEC.parse(DataRunStatus, raw or {}, "status", allow_unknown=True)
