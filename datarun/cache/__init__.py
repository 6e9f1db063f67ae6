"""The run cache: skip a run whose identical twin already succeeded (FORMAT.md §15).

``key`` computes the cache key from a run's spec (pure); ``plan`` carries what a webhook-injected
pod's key is made of to its fuse sidecar; ``entries`` writes an entry per cacheable run and looks
keys up against the run records. The facade binds a :class:`RunCache`
to a client's store as ``Client.cache``.
"""

from datarun.cache.code import tree_hash
from datarun.cache.entries import Explanation, InvalidReasons, Lookup, RunCache, not_invalidated, run_nodes
from datarun.cache.key import (
    KEY_SCHEMA,
    OFF,
    POLICIES,
    REFRESH,
    USE,
    CacheKey,
    InputSpec,
    KeySpec,
    OutputSpec,
    SecretRef,
    canonical,
    check_policy,
    compute_key,
    differences,
    image_part,
    key_from_parts,
    task_of,
)
from datarun.cache.plan import ENV_CACHE_PLAN, CachePlan, PlanInput, PlanOutput

__all__ = [
    "ENV_CACHE_PLAN",
    "KEY_SCHEMA",
    "OFF",
    "POLICIES",
    "REFRESH",
    "USE",
    "CacheKey",
    "CachePlan",
    "Explanation",
    "InputSpec",
    "InvalidReasons",
    "KeySpec",
    "Lookup",
    "OutputSpec",
    "PlanInput",
    "PlanOutput",
    "RunCache",
    "SecretRef",
    "canonical",
    "check_policy",
    "compute_key",
    "differences",
    "image_part",
    "key_from_parts",
    "not_invalidated",
    "run_nodes",
    "task_of",
    "tree_hash",
]
