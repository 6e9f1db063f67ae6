"""Labels (FORMAT.md §7): moving one by compare-and-swap, and the history of its moves.

A label record is the only mutable object in a store. Each move writes the new record with
``put_if_match`` against the ETag it read (``put_if_absent`` for the first), then appends a
create-only copy under ``label-history/``. A mover that dies between the two writes leaves the
history one entry short; the next mover repairs it before moving on.

Callers validate names and check that the repo and bundle exist; these functions only read
and write label records.
"""

from __future__ import annotations

import contextlib
import time

from datarun.errors import ConflictError, ObjectNotFound, PreconditionFailed
from datarun.layout import history_key, history_prefix, label_key, labels_prefix
from datarun.model import Label
from datarun.records import Records, dumps, now


def get(records: Records, repo: str, name: str) -> Label:
    return Label.from_json(
        records.read(
            label_key(repo, name),
            f"label `{name}` not found in repo `{repo}`; list them with `datarun label list --repo {repo}`",
        )
    )


def list_all(records: Records, repo: str) -> list[Label]:
    return [Label.from_json(raw) for raw in records.read_all(labels_prefix(repo))]


def history(records: Records, repo: str, name: str) -> list[Label]:
    """Every move of the label, oldest first."""
    out = [Label.from_json(raw) for raw in records.read_all(history_prefix(repo, name))]
    if not out:
        get(records, repo, name)  # raises the not-found error with its hint
    return out


def move(
    records: Records,
    repo: str,
    name: str,
    bundle_id: str,
    *,
    author: str,
    expect: str | None = None,
    retries: int = 0,
) -> Label:
    """Point ``name`` at ``bundle_id`` with compare-and-swap.

    Of several concurrent writers exactly one wins each round; a loser retries up to
    ``retries`` times against the new value, then fails with ConflictError. ``expect``
    makes the move conditional on the label's current bundle ("" = must not exist).
    """
    key = label_key(repo, name)
    meta = records.meta
    for attempt in range(retries + 1):
        found = records.read_versioned(key)
        current: Label | None = Label.from_json(found[0]) if found is not None else None
        etag = found[1] if found is not None else None
        if expect is not None and (current.bundle if current else "") != expect:
            actual = current.bundle if current else "nothing"
            raise ConflictError(f"label `{name}` in repo `{repo}` points at {actual}, not {expect or 'nothing'}")
        if current is not None:
            # Repair history if the previous mover died between its two writes.
            append_history(records, current)
        new = Label(
            repo,
            name,
            bundle_id,
            (current.seq + 1) if current else 1,
            now(),
            author,
            current.bundle if current else "",
        )
        try:
            if etag is None:
                meta.put_if_absent(key, dumps(new.to_json()))
            else:
                meta.put_if_match(key, dumps(new.to_json()), etag)
        except (PreconditionFailed, ObjectNotFound):
            if attempt < retries:
                time.sleep(0.01 * (attempt + 1))
                continue
            raise ConflictError(
                f"label `{name}` in repo `{repo}` was moved by another writer at the same time; "
                "check `datarun label get` and set it again, or pass --retries"
            ) from None
        append_history(records, new)
        return new
    raise AssertionError("unreachable")


def append_history(records: Records, label: Label) -> None:
    with contextlib.suppress(PreconditionFailed):  # already recorded: history is idempotent
        records.meta.put_if_absent(history_key(label.repo, label.name, label.seq), dumps(label.to_json()))
