"""Run records in the store: create, update with compare-and-swap, read any version, history.

Layout (FORMAT.md, "Runs")::

    runs/records/<run-id>/<version:06d>.json   every version, never changed once written
    runs/changes/<change-id>.json              one per written version: the feed the catalog syncs

An update writes version N+1 create-only (``put_if_absent``). That is the compare-and-swap: of
two writers that both read version N, exactly one creates N+1; the other re-reads and applies
its change again on top (a bounded number of times), so no writer's change is lost and no
version is overwritten. The change object is written right after the version it announces and
carries the whole document, so a reader of the feed needs no second request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import blake3
import orjson

from datarun.errors import ConflictError, IntegrityError, NotFoundError, ObjectNotFound, PreconditionFailed, UsageError
from datarun.ids import is_ksuid, new_ksuid
from datarun.layout import (
    RUN_CHANGES_PREFIX as CHANGES,
    RUN_RECORDS_PREFIX as RECORDS,
    run_change_key as change_key,
    run_record_key as record_key,
    run_record_prefix as record_prefix,
)
from datarun.runs.model import BundleLink, Run, now_iso
from datarun.store.base import ObjectStore
from datarun.summary import TransferSummary

DEFAULT_RETRIES = 20


def stable_run_id(when: float, identity: str) -> str:
    """The same id every time for the same ``identity`` (a DataRun's uid, an imported folder's
    URL), still sorting by ``when``: a retried create then finds its own record instead of
    making a second run."""
    return new_ksuid(when, blake3.blake3(identity.encode()).digest()[:13])


def _dumps(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _check_id(run_id: str) -> str:
    if not is_ksuid(run_id):
        raise UsageError(f"`{run_id}` is not a run id (27 letters and digits, as printed by `run upload`)")
    return run_id


class RunStore:
    """The run records of one (metadata) store. ``before_write`` runs before the first write,
    e.g. the client's check that the store is of a format this datarun writes."""

    def __init__(
        self,
        meta: ObjectStore,
        *,
        author: str = "",
        host: str = "",
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self.meta = meta
        self.author = author
        self.host = host
        self._before_write = before_write

    # -- reading ----------------------------------------------------------------------------

    def _parse(self, key: str, raw: bytes) -> Run:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise IntegrityError(f"run record `{key}` is corrupt: {err}") from None
        run = Run.from_json(doc, f"run record `{key}`")
        expected = key[len(RECORDS) :].split("/")
        if [run.id, f"{run.version:06d}.json"] != expected:
            raise IntegrityError(f"run record `{key}` is corrupt: it holds run {run.id} version {run.version}")
        return run

    def _missing(self, run_id: str) -> NotFoundError:
        return NotFoundError(f"run `{run_id}` not found in `{self.meta.url}`; find runs with `datarun run list`")

    def _versions(self, run_id: str) -> list[str]:
        return [info.key for info in self.meta.list(record_prefix(_check_id(run_id)))]

    def get(self, run_id: str, version: int | None = None) -> Run:
        """The latest version (one list and one read), or version ``version``."""
        if version is not None:
            if version < 1:
                raise UsageError(f"--version {version}: versions start at 1")
            key = record_key(_check_id(run_id), version)
            try:
                raw, _ = self.meta.read(key)
            except ObjectNotFound:
                latest = self._versions(run_id)
                if not latest:
                    raise self._missing(run_id) from None
                raise NotFoundError(
                    f"run `{run_id}` has no version {version}; it has versions 1 to {len(latest)} "
                    f"(see `datarun run history {run_id}`)"
                ) from None
            return self._parse(key, raw)
        keys = self._versions(run_id)
        if not keys:
            raise self._missing(run_id)
        raw, _ = self.meta.read(keys[-1])
        return self._parse(keys[-1], raw)

    def history(self, run_id: str) -> list[Run]:
        """Every version, oldest first."""
        out = []
        for key in self._versions(run_id):
            raw, _ = self.meta.read(key)
            out.append(self._parse(key, raw))
        if not out:
            raise self._missing(run_id)
        return out

    def changes(self, after: str | None = None) -> Iterator[Run]:
        """The change feed in order, strictly after the change key ``after`` (the catalog's
        watermark); each item is the full document of one written version."""
        for info in self.meta.list(CHANGES, start_after=after):
            raw, _ = self.meta.read(info.key)
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as err:
                raise IntegrityError(f"run change `{info.key}` is corrupt: {err}") from None
            yield Run.from_json(doc, f"run change `{info.key}`")

    # -- writing ----------------------------------------------------------------------------

    def _write(self, run: Run) -> Run:
        """Create version ``run.version``; PreconditionFailed if another writer made it first."""
        if self._before_write is not None:
            self._before_write()
            self._before_write = None
        run.check()
        doc = _dumps(run.to_json())
        self.meta.put_if_absent(record_key(run.id, run.version), doc)
        # Right after the version: a crash in between leaves a version the feed does not name
        # yet; the next version's change carries the whole document, so the catalog catches up.
        self.meta.put_if_absent(change_key(new_ksuid()), doc)
        return run

    def create(self, run: Run) -> Run:
        """Store ``run`` as version 1 (author, host and updated filled in when empty).

        Raises ConflictError if a run with this id exists already."""
        first = replace(
            run,
            version=1,
            updated=now_iso(),
            author=run.author or self.author,
            host=run.host or self.host,
        )
        try:
            return self._write(first)
        except PreconditionFailed:
            raise ConflictError(f"run `{run.id}` exists already in `{self.meta.url}`") from None

    def new_id(self) -> str:
        return new_ksuid()

    def update(self, run_id: str, change: Callable[[Run], Run], *, retries: int = DEFAULT_RETRIES) -> Run:
        """Apply ``change`` to the latest version and store the result as the next version.

        ``change`` may run several times: when another writer stored a version in between, it
        is applied again to that one. Returns the latest version unchanged if ``change`` changes
        nothing; raises ConflictError after ``retries`` lost races.
        """
        for attempt in range(retries + 1):
            current = self.get(run_id)
            wanted = change(current)
            if replace(wanted, updated=current.updated) == current:
                return current
            if wanted.id != current.id:
                raise UsageError(f"an update cannot change the id of run `{run_id}`")
            nxt = replace(wanted, version=current.version + 1, updated=now_iso())
            try:
                return self._write(nxt)
            except PreconditionFailed:
                if attempt < retries:
                    # Full jitter: two writers that collided must not collide again in lockstep.
                    time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # noqa: S311 (not crypto)
                    continue
        raise ConflictError(
            f"run `{run_id}` was updated by other writers {retries + 1} times in a row while this update "
            "retried; run the command again"
        )

    # -- the named updates ------------------------------------------------------------------

    def tag(self, run_id: str, tags: tuple[str, ...], *, remove: bool = False) -> Run:
        return self.update(run_id, lambda r: r.without_tags(tags) if remove else r.with_tags(tags))

    def annotate(self, run_id: str, values: dict[str, str]) -> Run:
        return self.update(run_id, lambda r: r.with_annotations(values))

    def set_hidden(self, run_id: str, hidden: bool) -> Run:
        return self.update(run_id, lambda r: replace(r, hidden=hidden))

    def finish(
        self,
        run_id: str,
        phase: str,
        exit_code: int | None,
        outputs: tuple[BundleLink, ...] = (),
        *,
        end: str = "",
        transfers: dict[str, TransferSummary] | None = None,
    ) -> Run:
        """Phase, exit code and end time; ``outputs`` (with their transfer summaries, by output
        name) add to the recorded ones. Idempotent: a retried finish with the same values writes
        no new version."""
        return self.update(run_id, lambda r: r.finished(phase, exit_code, outputs, end or r.end, transfers))
