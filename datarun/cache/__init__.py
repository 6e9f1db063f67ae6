"""The run cache: skip a run whose identical twin already succeeded (FORMAT.md §15).

``key`` computes the cache key from a run's spec (pure); ``entries`` writes an entry per
cacheable run and looks keys up against the run records. The facade binds a :class:`RunCache`
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

__all__ = [
    "KEY_SCHEMA",
    "OFF",
    "POLICIES",
    "REFRESH",
    "USE",
    "CacheKey",
    "Explanation",
    "InputSpec",
    "InvalidReasons",
    "KeySpec",
    "Lookup",
    "OutputSpec",
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
