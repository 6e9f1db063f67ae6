"""Deleting bundles and repos, renaming repos: records only. The data they leave unreferenced is
reclaimed by the next ``gc`` once its grace period has passed.

Lineage survives deletion: a bundle that another bundle or a recorded run names as an input
leaves a tombstone (``repos/<repo>/tombstones/<id>.json``), so lineage shows it as deleted
rather than as an unknown id. A removed label's history is archived, not lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import blake3
import orjson

from datarun.errors import ConflictError, DatarunError, NotFoundError, ObjectNotFound, PreconditionFailed
from datarun.layout import (
    REPOS_PREFIX,
    RUNS_PREFIX,
    archived_history_prefix,
    bundle_key,
    history_prefix,
    kind_of,
    label_key,
    repo_key,
    repo_prefix,
    repo_tombstone_key,
    tombstone_key,
)
from datarun.listing import BundleListing
from datarun.model import Bundle, Label, validate_repo_name

if TYPE_CHECKING:
    from datarun.repo import Client


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Tombstone:
    repo: str
    bundle: str
    deleted: str
    by: str
    message: str
    manifest: str
    referenced_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "kind": "tombstone",
            "repo": self.repo,
            "id": self.bundle,
            "deleted": self.deleted,
            "by": self.by,
            "message": self.message,
            "manifest": self.manifest,
            "referenced_by": list(self.referenced_by),
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Tombstone:
        return Tombstone(
            str(raw["repo"]),
            str(raw["id"]),
            str(raw.get("deleted", "")),
            str(raw.get("by", "")),
            str(raw.get("message", "")),
            str(raw.get("manifest", "")),
            tuple(str(r) for r in raw.get("referenced_by", [])),
        )


@dataclass(frozen=True)
class BundleDeletion:
    bundle: Bundle
    labels: tuple[Label, ...]  # labels pointing at it (removed only with force)
    referenced_by: tuple[str, ...]  # who names it as an input: a tombstone is kept if any
    tombstone: bool


@dataclass(frozen=True)
class RepoDeletion:
    repo: str
    bundles: tuple[BundleDeletion, ...]
    labels: tuple[Label, ...]

    @property
    def total_size(self) -> int:
        return sum(b.bundle.total_size for b in self.bundles)


def _walk_refs(obj: Any) -> Iterator[tuple[str, str]]:
    """Every (repo, bundle) pair named anywhere in a JSON record (run records' shape may grow)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("bundle"), str) and isinstance(obj.get("repo"), str):
            yield obj["repo"], obj["bundle"]
        for value in obj.values():
            yield from _walk_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk_refs(value)


def references(client: Client, targets: set[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """Who names each of ``targets`` as an input: other bundles' provenance and run records."""
    found: dict[tuple[str, str], list[str]] = {t: [] for t in targets}
    for prefix, is_bundle in ((REPOS_PREFIX, True), (RUNS_PREFIX, False)):
        for info in client.meta.list(prefix):
            parts = info.key.split("/")
            if is_bundle and not (len(parts) == 4 and parts[2] == "bundles"):
                continue
            if not info.key.endswith(".json"):
                continue
            try:
                raw, _ = client.meta.read(info.key)
                record = orjson.loads(raw)
            except (ObjectNotFound, orjson.JSONDecodeError):
                continue
            where = record.get("provenance", {}).get("inputs", []) if is_bundle else record
            for ref in set(_walk_refs(where)):
                if ref in found and not (is_bundle and (parts[1], parts[3][:-5]) == ref):
                    found[ref].append(f"bundle {parts[1]}/{parts[3][:-5]}" if is_bundle else f"run record {info.key}")
    return found


def plan_bundle_delete(client: Client, repo: str, bundle_id: str) -> BundleDeletion:
    bundle = client.get_bundle(repo, bundle_id)
    labels = tuple(lab for lab in client.list_labels(repo) if lab.bundle == bundle_id)
    refs = references(client, {(repo, bundle_id)})[(repo, bundle_id)]
    return BundleDeletion(bundle, labels, tuple(refs), bool(refs))


def _refuse_labels(plan: BundleDeletion) -> None:
    names = ", ".join(f"`{lab.name}`" for lab in plan.labels)
    raise ConflictError(
        f"bundle `{plan.bundle.id}` of repo `{plan.bundle.repo}` is what label(s) {names} point at; move them "
        "first (`datarun label set`), or pass --force to remove those labels with it"
    )


def remove_label(client: Client, label: Label) -> None:
    """Remove a label, archiving its history so that a later label of that name starts afresh
    (seq 1) without meeting the old entries, and nothing of the old one is lost."""
    meta = client.meta
    stamp = f"{label.seq:012d}-{blake3.blake3(_dumps(label.to_json())).hexdigest()[:12]}"
    archive = archived_history_prefix(label.repo, label.name, stamp)
    entries = list(meta.list(history_prefix(label.repo, label.name)))
    for info in entries:
        raw, _ = meta.read(info.key)
        meta.put(archive + info.key.rsplit("/", 1)[1], raw)
    meta.put(archive + f"{label.seq:012d}.json", _dumps(label.to_json()))  # history may lag by one (§7.2)
    for info in entries:
        meta.delete(info.key)
    meta.delete(label_key(label.repo, label.name))


def _tombstone(client: Client, plan: BundleDeletion) -> None:
    b = plan.bundle
    stone = Tombstone(b.repo, b.id, _now(), client.author[0], b.message, b.manifest, plan.referenced_by)
    with contextlib.suppress(PreconditionFailed):  # a rerun of an interrupted delete
        client.meta.put_if_absent(tombstone_key(b.repo, b.id), _dumps(stone.to_json()))


def delete_bundle(client: Client, plan: BundleDeletion, *, force: bool = False) -> None:
    """Delete a bundle record (tombstone first, so lineage never dangles, even after a crash)."""
    if plan.labels and not force:
        _refuse_labels(plan)
    for label in plan.labels:
        remove_label(client, label)
    if plan.tombstone:
        _tombstone(client, plan)
    repo = client.get_repo(plan.bundle.repo)
    BundleListing(client.meta, repo.name, repo.created).will_delete(plan.bundle.id)
    client.meta.delete(bundle_key(plan.bundle.repo, plan.bundle.id))


def plan_repo_delete(client: Client, repo: str) -> RepoDeletion:
    bundles = client.list_bundles(repo)
    labels = tuple(client.list_labels(repo))
    refs = references(client, {(repo, b.id) for b in bundles})
    plans = []
    for b in bundles:
        # Inputs from inside the repo go with it; only outside readers need the tombstone.
        outside = tuple(r for r in refs[(repo, b.id)] if not r.startswith(f"bundle {repo}/"))
        plans.append(BundleDeletion(b, (), outside, bool(outside)))
    return RepoDeletion(repo, tuple(plans), labels)


def delete_repo(client: Client, plan: RepoDeletion) -> None:
    """Labels, then bundles, then the repo record; then bundles that a concurrent upload
    committed meanwhile (that upload checked the repo before it was gone)."""
    for label in plan.labels:
        remove_label(client, label)
    for b in plan.bundles:
        delete_bundle(client, b)
    client.meta.delete(repo_key(plan.repo))
    kept = ("bundle-tombstone", "removed-label-history")  # lineage and label history outlive the repo
    for info in list(client.meta.list(repo_prefix(plan.repo))):
        kind = kind_of(info.key)
        if kind is None or kind.name not in kept:
            client.meta.delete(info.key)


def _renamed(raw: bytes, new: str, key: str) -> bytes:
    record = orjson.loads(raw)
    if isinstance(record, dict) and "repo" in record:
        record["repo"] = new
    if key.endswith("/repo.json"):
        record["name"] = new
    return _dumps(record)


def rename_repo(client: Client, old: str, new: str) -> int:
    """Copy every record of ``old`` under ``new`` (labels with their history, tombstones), make
    ``new`` visible, leave a forwarding tombstone, then remove ``old``. Returns records moved.

    Not safe against writers of ``old`` at the same time (a label moved during the copy is lost):
    rename when nothing writes to the repo. An interrupted rename is finished by running it again.
    """
    validate_repo_name(new)
    meta = client.meta
    try:
        client.get_repo(old)
    except NotFoundError:
        if meta.exists(repo_key(new)) and meta.exists(repo_tombstone_key(old)):
            pass  # an interrupted rename: finish removing the old records below
        else:
            raise
    else:
        if meta.exists(repo_key(new)):
            raise ConflictError(f"repo `{new}` already exists in `{meta.url}`; choose another name or delete it first")
    moved = 0
    keys = [info.key for info in meta.list(repo_prefix(old))]
    for key in keys:
        if key == repo_key(old):
            continue
        with contextlib.suppress(ObjectNotFound):
            raw, _ = meta.read(key)
            meta.put(repo_prefix(new) + key[len(repo_prefix(old)) :], _renamed(raw, new, key))
            moved += 1
    with contextlib.suppress(ObjectNotFound):
        raw, _ = meta.read(repo_key(old))
        with contextlib.suppress(PreconditionFailed):
            meta.put_if_absent(repo_key(new), _renamed(raw, new, repo_key(old)))
        moved += 1
    stone = {"format": 1, "kind": "renamed", "repo": old, "renamed_to": new, "time": _now(), "by": client.author[0]}
    meta.put(repo_tombstone_key(old), _dumps(stone))
    meta.delete(repo_key(old))
    for key in keys:
        meta.delete(key)
    return moved


def lineage_status(client: Client, repo: str, bundle_id: str) -> str:
    """How an input reads today: "ok", "deleted <when> by <who>", "renamed to <repo>" or "missing"."""
    meta = client.meta
    if meta.exists(bundle_key(repo, bundle_id)):
        return "ok"
    try:
        raw, _ = meta.read(tombstone_key(repo, bundle_id))
        stone = Tombstone.from_json(orjson.loads(raw))
        return f"deleted {stone.deleted} by {stone.by or 'unknown'}"
    except (ObjectNotFound, DatarunError, KeyError, orjson.JSONDecodeError):
        pass
    try:
        raw, _ = meta.read(repo_tombstone_key(repo))
        target = str(orjson.loads(raw).get("renamed_to", ""))
    except (ObjectNotFound, orjson.JSONDecodeError):
        return "missing"
    if target and target != repo:
        return f"renamed to {target}: " + lineage_status(client, target, bundle_id)
    return "missing"
