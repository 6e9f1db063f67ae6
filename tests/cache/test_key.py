"""The cache key: the mutation matrix at the key level (every part it names changes the key),
what must NOT change it, and the image-tag rule."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from datarun.cache import (
    KEY_SCHEMA,
    InputSpec,
    KeySpec,
    OutputSpec,
    SecretRef,
    canonical,
    compute_key,
    differences,
    task_of,
)

DIGEST = "sha256:" + "a" * 64
BASE = KeySpec(
    command=("python", "train.py", "--epochs", "3"),
    image=f"registry.example/train@{DIGEST}",
    env={"MODE": "fast", "TOKEN": SecretRef("creds", "token")},
    params={"lr": 0.01, "model": {"layers": [64, 32]}},
    inputs={"data": InputSpec("b" * 64, "train/")},
    outputs={"model": OutputSpec("models", "out/")},
    databases=("postgres://db/prod",),
    versions={"wrapper": "1", "sidecar": "0.1.0"},
    code="c" * 64,
    salt="v1",
)

MUTATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "image digest": ({"image": f"registry.example/train@sha256:{'d' * 64}"}, "image.digest"),
    "one arg": ({"command": ("python", "train.py", "--epochs", "4")}, "command[3]"),
    "one env value": ({"env": {"MODE": "slow", "TOKEN": SecretRef("creds", "token")}}, "env.MODE"),
    "secret ref": ({"env": {"MODE": "fast", "TOKEN": SecretRef("creds", "other")}}, "env.TOKEN.key"),
    "one param": ({"params": {"lr": 0.02, "model": {"layers": [64, 32]}}}, "params.lr"),
    "nested param": ({"params": {"lr": 0.01, "model": {"layers": [64, 33]}}}, "params.model.layers[1]"),
    "one input byte": ({"inputs": {"data": InputSpec("e" * 64, "train/")}}, "inputs.data.manifest"),
    "input path": ({"inputs": {"data": InputSpec("b" * 64, "test/")}}, "inputs.data.path"),
    "database source": ({"databases": ("postgres://db/staging",)}, "databases[0]"),
    "sidecar version": ({"versions": {"wrapper": "1", "sidecar": "0.2.0"}}, "versions.sidecar"),
    "code": ({"code": "f" * 64}, "code"),
    "cache version": ({"salt": "v2"}, "salt"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_part_changes_the_key_and_is_named_in_the_difference(name: str) -> None:
    change, path = MUTATIONS[name]
    base = compute_key(BASE)
    mutated = compute_key(dataclasses.replace(BASE, **change))
    assert mutated.key != base.key
    assert differences(base.parts, mutated.parts) == [path]


def test_the_same_spec_gives_the_same_key_whatever_the_dict_order() -> None:
    reordered = dataclasses.replace(
        BASE,
        env={"TOKEN": SecretRef("creds", "token"), "MODE": "fast"},
        params={"model": {"layers": [64, 32]}, "lr": 0.01},
    )
    assert compute_key(reordered).key == compute_key(BASE).key
    assert compute_key(BASE).parts["schema"] == KEY_SCHEMA


def test_a_secret_is_keyed_by_name_and_key_never_by_value() -> None:
    parts = compute_key(BASE).parts
    assert parts["env"]["TOKEN"] == {"secret": "creds", "key": "token"}


def test_the_key_is_blake3_of_the_canonical_parts() -> None:
    import blake3

    key = compute_key(BASE)
    assert key.key == blake3.blake3(canonical(key.parts)).hexdigest()
    assert canonical({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_the_output_label_and_the_repo_name_of_a_digest_do_not_matter() -> None:
    other_repo = dataclasses.replace(BASE, image=f"mirror.example/train@{DIGEST}")
    assert compute_key(other_repo).key == compute_key(BASE).key


def test_a_bare_tag_is_uncacheable_until_a_digest_is_known_or_tags_are_trusted() -> None:
    tagged = dataclasses.replace(BASE, image="registry.example/train:latest")
    key = compute_key(tagged)
    assert not key.cacheable and "trustTags" in key.uncacheable
    assert compute_key(dataclasses.replace(tagged, trust_tags=True)).cacheable
    known = compute_key(dataclasses.replace(tagged, image_digest=f"registry.example/train@{DIGEST}"))
    assert known.cacheable and known.key == compute_key(BASE).key


def test_no_outputs_is_uncacheable_and_the_task_is_the_outputs() -> None:
    assert not compute_key(dataclasses.replace(BASE, outputs={})).cacheable
    assert compute_key(BASE).task == task_of(BASE.outputs)
    assert compute_key(dataclasses.replace(BASE, salt="v9")).task == compute_key(BASE).task
    assert task_of({"model": OutputSpec("models", "elsewhere/")}) != compute_key(BASE).task


def test_a_key_rebuilt_from_its_parts_is_the_same_and_a_known_digest_makes_a_tag_cacheable() -> None:
    from datarun.cache import key_from_parts

    base = compute_key(BASE)
    assert key_from_parts(base.parts) == base
    tagged = compute_key(dataclasses.replace(BASE, image="registry.example/train:latest"))
    assert not key_from_parts(tagged.parts).cacheable
    known = key_from_parts(tagged.parts, f"registry.example/train@{DIGEST}")
    assert known.cacheable and known.key == base.key
