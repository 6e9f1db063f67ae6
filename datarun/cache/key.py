"""The run cache key (FORMAT.md §15): BLAKE3 over the canonical JSON of everything a run's
outputs can depend on. Pure: no store, no clock, no files, so the operator's builder, the sidecar
and the CLI all compute the same key from the same spec.

The parts are kept beside the digest. A key alone can only say "miss"; the parts say *why*, by
comparing them with the nearest earlier run's (``differences``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3
import orjson

from datarun.errors import UsageError
from datarun.runs import CacheStamp

KEY_SCHEMA = 1
"""Bumped whenever what goes into the key, or how it is spelled, changes: an old entry then
simply never matches, which is the safe direction (a miss, never a false hit)."""

POLICIES = ("use", "refresh", "off")
USE, REFRESH, OFF = POLICIES


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string for one JSON value."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(value: Any) -> str:
    return blake3.blake3(canonical(value)).hexdigest()


@dataclass(frozen=True, slots=True)
class SecretRef:
    """An env value taken from a Secret: the key names it, never holds its value (a rotated
    secret then hits; bump the cache version if the value matters to the outputs)."""

    name: str
    key: str


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A pinned input. ``manifest`` is the bundle's manifest hash, its content identity: the
    same bytes uploaded again under a new bundle id have the same manifest and still hit."""

    manifest: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A declared output: where it goes. The label is left out on purpose: a hit moves the
    label to the cached bundle, so which label is moved does not change what gets computed."""

    repo: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Everything the key is made of, as the caller knows it at pin time."""

    command: tuple[str, ...]
    image: str = ""  # "" for a local run (`run exec`)
    image_digest: str | None = None  # the kubelet's imageID, when a run of this tag reported one
    trust_tags: bool = False
    env: dict[str, str | SecretRef] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, InputSpec] = field(default_factory=dict)
    outputs: dict[str, OutputSpec] = field(default_factory=dict)
    databases: tuple[str, ...] = ()  # the sources the database sidecar restores from
    versions: dict[str, str] = field(default_factory=dict)  # wrapper, sidecar, runner
    code: str | None = None  # `--code PATH`: the tree hash of the task's source
    salt: str = ""  # spec.cache.version / --cache-version: the user's "recompute everything"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The key, the task it belongs to, its parts, and whether it may be used at all."""

    key: str
    task: str
    parts: dict[str, Any]
    uncacheable: str = ""  # why a lookup must miss (a bare image tag without trustTags), or ""

    @property
    def cacheable(self) -> bool:
        return not self.uncacheable

    def stamp(self, policy: str, cached_from: str | None = None) -> CacheStamp:
        """What a run record keeps of this key (FORMAT.md §15.3)."""
        return CacheStamp(self.key, int(self.parts["schema"]), self.parts, policy, cached_from)


def image_part(image: str, image_digest: str | None, trust_tags: bool) -> tuple[dict[str, Any] | None, str]:
    """The image's identity and, if it has none a key may rely on, the reason."""
    if not image:
        return None, ""
    if "@" in image:
        # `repo@sha256:...`: the digest names the bytes; the repository name does not matter.
        return {"digest": image.rsplit("@", 1)[1]}, ""
    if image_digest:
        return {"digest": image_digest.rsplit("@", 1)[-1]}, ""
    if trust_tags:
        return {"tag": image}, ""
    # Marked, so that a key rebuilt from stored parts (``key_from_parts``) knows it was untrusted.
    return {"tag": image, "untrusted": True}, (
        f"image `{image}` is a tag and no digest is known for it yet, and a tag can move; pin it by "
        "digest (image@sha256:...) or set cache.trustTags: true"
    )


def _env_part(env: dict[str, str | SecretRef]) -> dict[str, Any]:
    return {
        name: {"secret": value.name, "key": value.key} if isinstance(value, SecretRef) else value
        for name, value in env.items()
    }


def task_of(outputs: dict[str, OutputSpec]) -> str:
    """The task a key belongs to: what it declares it writes. Runs of one task are the ones
    `explain-cache` compares a miss with."""
    return digest({"schema": KEY_SCHEMA, "outputs": {n: [o.repo, o.path] for n, o in outputs.items()}})


def compute_key(spec: KeySpec) -> CacheKey:
    image, uncacheable = image_part(spec.image, spec.image_digest, spec.trust_tags)
    if not spec.outputs:
        uncacheable = "the run declares no outputs, so a hit would have nothing to reuse"
    parts: dict[str, Any] = {
        "schema": KEY_SCHEMA,
        "image": image,
        "command": list(spec.command),
        "env": _env_part(spec.env),
        "params": spec.params,
        "inputs": {n: {"manifest": i.manifest, "path": i.path} for n, i in spec.inputs.items()},
        "outputs": {n: {"repo": o.repo, "path": o.path} for n, o in spec.outputs.items()},
        "databases": list(spec.databases),
        "versions": dict(spec.versions),
        "code": spec.code,
        "salt": spec.salt,
    }
    return CacheKey(digest(parts), task_of(spec.outputs), parts, uncacheable)


def key_from_parts(parts: dict[str, Any], image_digest: str | None = None) -> CacheKey:
    """The key of stored parts, with the image's tag replaced by ``image_digest`` when one became
    known (the kubelet's imageID after the run): the entry a finished run writes."""
    parts = dict(parts)
    image = parts.get("image")
    if image_digest and isinstance(image, dict) and "tag" in image:
        parts["image"] = {"digest": image_digest.rsplit("@", 1)[-1]}
    uncacheable = ""
    image = parts.get("image")
    if isinstance(image, dict) and image.get("untrusted"):
        uncacheable = f"image `{image.get('tag')}` is a tag and no digest is known for it; pin it by digest"
    outputs = parts.get("outputs") or {}
    if not outputs:
        uncacheable = "the run declares no outputs, so a hit would have nothing to reuse"
    task = task_of({n: OutputSpec(o["repo"], o["path"]) for n, o in outputs.items()})
    return CacheKey(digest(parts), task, parts, uncacheable)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise UsageError(f"cache policy `{policy}` is not one of {', '.join(POLICIES)}")
    return policy


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """The dotted paths at which two key parts differ, deepest first found: `params.lr`,
    `env.MODE`, `command[2]`, `inputs.data.manifest`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for name in sorted(set(old) | set(new)):
            path = f"{where}.{name}" if where else str(name)
            if name not in old or name not in new:
                out.append(path)
            else:
                out += differences(old[name], new[name], path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += differences(a, b, f"{where}[{i}]")
        return out
    return [] if canonical(old) == canonical(new) else [where or "(all)"]
