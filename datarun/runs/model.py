"""The run record: one run of an experiment, a simulation, a training or a DataRun.

A run is the exekias idea made first-class: its parameters (any JSON object, as in
``params.json``), what it read (pinned input bundles), what it wrote (output bundles), and the
metadata people later search by. The JSON document is the contract shared with the catalog
(FORMAT.md, "Runs"); parsing is strict, so a record a newer datarun wrote is refused rather than
misread, and a corrupt one is an integrity error, not a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from datarun.errors import IntegrityError, UsageError
from datarun.ids import is_ksuid
from datarun.model import validate_repo_name
from datarun.summary import TransferSummary

RUN_FORMAT = 1

RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CACHED = "Cached"
PHASES = (RUNNING, SUCCEEDED, FAILED, CACHED)

SOURCE_BUNDLE = "bundle"
SOURCE_IMPORT = "import"
SOURCE_KINDS = (SOURCE_BUNDLE, SOURCE_IMPORT)

MAX_TAG = 128
MAX_ANNOTATION_KEY = 256


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling, so string order is time order in every index."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what} `{text}` is not an ISO-8601 time such as 2023-06-09T14:28:56Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def validate_tag(tag: str) -> str:
    if not tag or len(tag) > MAX_TAG or any(ord(c) < 32 for c in tag) or tag != tag.strip():
        raise UsageError(f"invalid tag {tag!r}: use 1-{MAX_TAG} printable characters, no leading or trailing space")
    return tag


def validate_annotation_key(key: str) -> str:
    if not key or len(key) > MAX_ANNOTATION_KEY or any(ord(c) < 32 for c in key) or key != key.strip():
        raise UsageError(
            f"invalid annotation key {key!r}: use 1-{MAX_ANNOTATION_KEY} printable characters, no surrounding space"
        )
    return key


def check_json_value(value: Any, where: str) -> None:
    """Params must be plain JSON: no NaN or infinities (JSON has none), string keys only."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"{where} is {value}, which JSON cannot hold; use a number or a string")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{where} has the key {key!r}; JSON object keys are strings")
            check_json_value(item, f"{where}.{key}")
        return
    raise UsageError(f"{where} is a {type(value).__name__}, not a JSON value")


@dataclass(frozen=True, slots=True)
class BundleLink:
    """A bundle a run read (an input) or wrote (an output), under the name the run gave it."""

    name: str
    repo: str
    bundle: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "repo": self.repo, "bundle": self.bundle}

    @staticmethod
    def from_json(raw: Any) -> BundleLink:
        if not isinstance(raw, dict):
            raise ValueError(f"a bundle link is an object, not {raw!r}")
        link = BundleLink(_str(raw, "name"), _str(raw, "repo"), _str(raw, "bundle"))
        link.check()
        return link

    def check(self) -> None:
        validate_repo_name(self.repo)
        if not is_ksuid(self.bundle):
            raise UsageError(f"`{self.bundle}` is not a bundle id (27 letters and digits, as printed by upload)")


@dataclass(frozen=True, slots=True)
class Source:
    """Where the run's files live: in datarun bundles, or left in place by ``run import``."""

    kind: str
    uri: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "uri": self.uri}


@dataclass(frozen=True, slots=True)
class CacheStamp:
    """The run cache's note on a run (FORMAT.md §15): the key, the parts it was made of (kept so
    that a miss can be explained), the policy in force, and for a ``Cached`` run the earlier run
    whose outputs it reused."""

    key: str
    schema: int
    parts: dict[str, Any]
    policy: str = "use"
    cached_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "schema": self.schema,
            "parts": self.parts,
            "policy": self.policy,
            "cached_from": self.cached_from,
        }

    @staticmethod
    def from_json(raw: Any) -> CacheStamp:
        if not isinstance(raw, dict):
            raise ValueError(f"cache is {raw!r}, not an object")
        cached_from = _opt_str(raw, "cached_from")
        if cached_from is not None and not is_ksuid(cached_from):
            raise ValueError(f"cache.cached_from `{cached_from}` is not a run id")
        return CacheStamp(
            key=_str(raw, "key"),
            schema=_int(raw, "schema"),
            parts=_obj(raw.get("parts", {}), "cache.parts"),
            policy=str(raw.get("policy") or "use"),
            cached_from=cached_from,
        )


@dataclass(frozen=True, slots=True)
class Run:
    """One version of a run record. ``version`` 1 is the creation; every update adds one."""

    id: str
    start: str
    title: str = ""
    version: int = 1
    updated: str = ""
    end: str | None = None
    phase: str = RUNNING
    exit_code: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    image: str = ""
    image_digest: str | None = None
    author: str = ""
    host: str = ""
    inputs: tuple[BundleLink, ...] = ()
    outputs: tuple[BundleLink, ...] = ()
    tags: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    hidden: bool = False
    source: Source | None = None
    cache: CacheStamp | None = None
    # What uploading each output moved, by output name (the names of ``outputs``): kept in the run
    # so `run show` and the catalog answer "what did this run cost" without reading bundle records.
    transfers: dict[str, TransferSummary] = field(default_factory=dict)
    # The DataRun as applied (identity, labels, annotations, spec; never a Secret's value), so the
    # operator can re-create the run even after the object is gone; None for runs not made by it.
    resource: dict[str, Any] | None = None
    rerun_of: str | None = None  # the run this one re-does (an invalidation's `rerun` action)

    def check(self) -> Run:
        """Raise UsageError naming the field if this run cannot be stored; return it otherwise."""
        if not is_ksuid(self.id):
            raise UsageError(f"`{self.id}` is not a run id (27 letters and digits, as printed by `run upload`)")
        if self.version < 1:
            raise UsageError(f"run `{self.id}`: version {self.version} must be at least 1")
        parse_time(self.start, f"run `{self.id}`: start")
        if self.end is not None:
            parse_time(self.end, f"run `{self.id}`: end")
        if self.updated:
            parse_time(self.updated, f"run `{self.id}`: updated")
        if self.phase not in PHASES:
            raise UsageError(f"run `{self.id}`: phase `{self.phase}` is not one of {', '.join(PHASES)}")
        if not isinstance(self.params, dict):
            raise UsageError(f"run `{self.id}`: params must be a JSON object, not {type(self.params).__name__}")
        check_json_value(self.params, "params")
        for link in (*self.inputs, *self.outputs):
            link.check()
        for tag in self.tags:
            validate_tag(tag)
        if len(set(self.tags)) != len(self.tags):
            raise UsageError(f"run `{self.id}`: tags must not repeat")
        for key, value in self.annotations.items():
            validate_annotation_key(key)
            if not isinstance(value, str):
                raise UsageError(f"annotation `{key}` must be a string")
        if self.source is not None and self.source.kind not in SOURCE_KINDS:
            raise UsageError(f"run `{self.id}`: source kind `{self.source.kind}` is not one of {SOURCE_KINDS}")
        if self.resource is not None:
            if not isinstance(self.resource, dict) or not isinstance(self.resource.get("spec"), dict):
                raise UsageError(f"run `{self.id}`: resource must be a Kubernetes object with a `spec` object")
            check_json_value(self.resource, "resource")
        if self.rerun_of is not None and not is_ksuid(self.rerun_of):
            raise UsageError(f"run `{self.id}`: rerun_of `{self.rerun_of}` is not a run id")
        names = {link.name for link in self.outputs}
        for name in self.transfers:
            if name not in names:
                raise UsageError(f"run `{self.id}`: transfer summary for `{name}`, which is not one of its outputs")
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "id": self.id,
            "version": self.version,
            "updated": self.updated,
            "start": self.start,
            "end": self.end,
            "title": self.title,
            "phase": self.phase,
            "exit_code": self.exit_code,
            "params": self.params,
            "command": list(self.command),
            "image": self.image,
            "image_digest": self.image_digest,
            "author": self.author,
            "host": self.host,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "tags": list(self.tags),
            "annotations": dict(self.annotations),
            "hidden": self.hidden,
            "source": self.source.to_json() if self.source is not None else None,
            "cache": self.cache.to_json() if self.cache is not None else None,
            "transfers": {name: t.to_json() for name, t in sorted(self.transfers.items())},
            "resource": self.resource,
            "rerun_of": self.rerun_of,
        }

    @staticmethod
    def from_json(raw: Any, where: str = "run record") -> Run:
        """Parse a stored document; a newer format is a usage error, a malformed one an integrity error."""
        if not isinstance(raw, dict):
            raise IntegrityError(f"{where} is corrupt: not a JSON object")
        version = raw.get("format")
        if not isinstance(version, int) or isinstance(version, bool):
            raise IntegrityError(f"{where} is corrupt: its `format` is {version!r}")
        if version > RUN_FORMAT:
            raise UsageError(
                f"{where} has run format v{version}, newer than this datarun reads (v{RUN_FORMAT}); upgrade datarun"
            )
        try:
            source = raw.get("source")
            exit_code = raw.get("exit_code")
            if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
                raise ValueError(f"exit_code {exit_code!r} is not an integer")
            annotations = raw.get("annotations") or {}
            if not isinstance(annotations, dict):
                raise ValueError("annotations is not an object")
            # Absent in records written before transfers were kept: those runs simply have none.
            transfers = _obj(raw.get("transfers") or {}, "transfers")
            run = Run(
                id=_str(raw, "id"),
                version=_int(raw, "version"),
                updated=str(raw.get("updated") or ""),
                start=_str(raw, "start"),
                end=_opt_str(raw, "end"),
                title=str(raw.get("title") or ""),
                phase=_str(raw, "phase"),
                exit_code=exit_code,
                params=_obj(raw.get("params", {}), "params"),
                command=tuple(_strs(raw.get("command", []), "command")),
                image=str(raw.get("image") or ""),
                image_digest=_opt_str(raw, "image_digest"),
                author=str(raw.get("author") or ""),
                host=str(raw.get("host") or ""),
                inputs=tuple(BundleLink.from_json(i) for i in _list(raw.get("inputs", []), "inputs")),
                outputs=tuple(BundleLink.from_json(o) for o in _list(raw.get("outputs", []), "outputs")),
                tags=tuple(_strs(raw.get("tags", []), "tags")),
                annotations={str(k): str(v) for k, v in annotations.items()},
                hidden=bool(raw.get("hidden", False)),
                source=Source(_str(source, "kind"), _str(source, "uri")) if source is not None else None,
                cache=CacheStamp.from_json(raw["cache"]) if raw.get("cache") is not None else None,
                transfers={str(k): _transfer(v, k) for k, v in transfers.items()},
                # Both absent in records written before reruns: those runs cannot be re-created from the record.
                resource=_obj(raw["resource"], "resource") if raw.get("resource") is not None else None,
                rerun_of=_opt_str(raw, "rerun_of"),
            )
            return run.check()
        except (KeyError, TypeError, ValueError, UsageError) as err:
            raise IntegrityError(f"{where} is corrupt: {err}") from None

    # -- the updates a run allows (each returns the next version's content) ---------------------

    def with_tags(self, tags: tuple[str, ...]) -> Run:
        merged = list(self.tags)
        merged += [t for t in tags if t not in merged]
        return replace(self, tags=tuple(merged))

    def without_tags(self, tags: tuple[str, ...]) -> Run:
        return replace(self, tags=tuple(t for t in self.tags if t not in tags))

    def with_annotations(self, values: dict[str, str]) -> Run:
        return replace(self, annotations={**self.annotations, **values})

    def with_outputs(self, outputs: tuple[BundleLink, ...], transfers: dict[str, TransferSummary] | None = None) -> Run:
        """Outputs (and their transfer summaries) add to those already recorded (each sidecar of a
        pod adds its own)."""
        merged = (*self.outputs, *(o for o in outputs if o not in self.outputs))
        return replace(self, outputs=merged, transfers={**self.transfers, **(transfers or {})})

    def finished(
        self,
        phase: str,
        exit_code: int | None,
        outputs: tuple[BundleLink, ...] = (),
        end: str | None = None,
        transfers: dict[str, TransferSummary] | None = None,
    ) -> Run:
        """The run at its end, with ``outputs`` added to the recorded ones."""
        return replace(self.with_outputs(outputs, transfers), phase=phase, exit_code=exit_code, end=end or now_iso())


def _transfer(raw: Any, name: str) -> TransferSummary:
    if not isinstance(raw, dict):
        raise ValueError(f"transfers.{name} is not an object")
    summary = TransferSummary.from_json(raw)
    if min(summary.bytes, summary.files, summary.chunks_new, summary.chunks_deduplicated) < 0 or summary.seconds < 0:
        raise ValueError(f"transfers.{name} has a negative count")
    return summary


def _str(raw: Any, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise ValueError(f"`{key}` is {value!r}, not a string")
    return value


def _opt_str(raw: Any, key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"`{key}` is {value!r}, not a string")
    return value


def _int(raw: Any, key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{key}` is {value!r}, not an integer")
    return value


def _obj(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"`{key}` is not an object")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"`{key}` is not a list")
    return value


def _strs(value: Any, key: str) -> list[str]:
    items = _list(value, key)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"`{key}` holds something other than strings")
    return items
