"""The run cache plan of a pod whose sidecars the webhook injected (an Argo step): FORMAT.md §15.3.

A DataRun's cache is looked up by the operator before any pod exists. A webhook-injected pod has
no operator in front of it, so its fuse sidecar looks it up, once it has pinned the inputs and
before it mounts them. The webhook writes everything else the key is made of into this plan (env
``DATARUN_CACHE_PLAN``, JSON); the sidecar adds the pinned inputs' manifests. One definition here
keeps the writer and the reader of the plan in step. Pure: no store, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from datarun.cache.key import POLICIES, CacheKey, InputSpec, KeySpec, OutputSpec, SecretRef, compute_key
from datarun.errors import UsageError

ENV_CACHE_PLAN = "DATARUN_CACHE_PLAN"
PLAN_FORMAT = 1
"""Bumped when the plan's fields change; a sidecar refuses a plan of another format (the webhook
and the sidecar image are then of different versions) rather than key it wrongly."""


@dataclass(frozen=True, slots=True)
class PlanInput:
    name: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class PlanOutput:
    name: str
    repo: str
    path: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the key of a pod is made of, but for its inputs' content. ``inputs`` and ``outputs``
    are in the order of the fuse sidecar's mounts and uploads, which is how it pairs them."""

    policy: str
    image: str
    command: tuple[str, ...]
    trust_tags: bool = False
    env: Mapping[str, str | SecretRef] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[PlanInput, ...] = ()
    outputs: tuple[PlanOutput, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    salt: str = ""

    def to_json(self) -> str:
        doc = {
            "format": PLAN_FORMAT,
            "policy": self.policy,
            "image": self.image,
            "trustTags": self.trust_tags,
            "command": list(self.command),
            "env": {
                k: {"secret": v.name, "key": v.key} if isinstance(v, SecretRef) else v for k, v in self.env.items()
            },
            "params": dict(self.params),
            "inputs": [{"name": i.name, "path": i.path} for i in self.inputs],
            "outputs": [{"name": o.name, "repo": o.repo, "path": o.path, "label": o.label} for o in self.outputs],
            "versions": dict(self.versions),
            "salt": self.salt,
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()

    @staticmethod
    def from_json(text: str) -> CachePlan:
        """Raises UsageError naming the variable for a plan this version cannot read."""
        try:
            doc = orjson.loads(text)
            if doc.get("format") != PLAN_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}; this version reads format {PLAN_FORMAT}")
            policy = str(doc["policy"])
            if policy not in POLICIES:
                raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
            env: dict[str, str | SecretRef] = {
                str(k): SecretRef(str(v["secret"]), str(v["key"])) if isinstance(v, dict) else str(v)
                for k, v in doc["env"].items()
            }
            return CachePlan(
                policy=policy,
                image=str(doc["image"]),
                command=tuple(str(w) for w in doc["command"]),
                trust_tags=bool(doc["trustTags"]),
                env=env,
                params=dict(doc["params"]),
                inputs=tuple(PlanInput(str(i["name"]), str(i["path"])) for i in doc["inputs"]),
                outputs=tuple(
                    PlanOutput(str(o["name"]), str(o["repo"]), str(o["path"]), str(o["label"])) for o in doc["outputs"]
                ),
                versions={str(k): str(v) for k, v in doc["versions"].items()},
                salt=str(doc["salt"]),
            )
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(
                f"{ENV_CACHE_PLAN}: not a run cache plan this version can read ({err}); the webhook writes it, "
                "so the operator and the sidecar image are probably of different versions"
            ) from None

    def key(self, manifests: Sequence[str]) -> CacheKey:
        """The key, given the manifest of each pinned input in the order of ``inputs``."""
        if len(manifests) != len(self.inputs):
            raise UsageError(f"{ENV_CACHE_PLAN}: names {len(self.inputs)} input(s) but the pod mounts {len(manifests)}")
        return compute_key(
            KeySpec(
                command=self.command,
                image=self.image,
                trust_tags=self.trust_tags,
                env=dict(self.env),
                params=dict(self.params),
                inputs={i.name: InputSpec(m, i.path) for i, m in zip(self.inputs, manifests, strict=True)},
                outputs={o.name: OutputSpec(o.repo, o.path) for o in self.outputs},
                versions=dict(self.versions),
                salt=self.salt,
            )
        )
