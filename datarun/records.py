"""Metadata records (FORMAT.md §6, §7, §9): how they are encoded, and how a reader refuses them.

A record is one JSON object in the metadata store. Readers refuse a record that is not JSON,
not an object, or carries a ``format`` newer than this datarun knows; they refuse the whole
store when its marker names another store format. ``Records`` is the metadata store seen
through those rules, so no caller reads a record without them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson

from datarun.errors import IntegrityError, NotFoundError, ObjectNotFound, PreconditionFailed, UsageError
from datarun.layout import STORE_MARKER
from datarun.model import FORMAT_VERSION
from datarun.store import ObjectStore

STORE_FORMAT = 1


def now() -> str:
    """The timestamp records carry: UTC, microseconds, with a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps(obj: object) -> bytes:
    # Indented and sorted: records are small, and people read them with `cat` when things go wrong.
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def decode(key: str, raw: bytes) -> Any:
    """A metadata record, refused if it is not JSON or a newer datarun wrote it."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise IntegrityError(f"record `{key}` is corrupt: {err}") from None
    if not isinstance(record, dict):
        raise IntegrityError(f"record `{key}` is corrupt: not a JSON object")
    version = record.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError(f"record `{key}` is corrupt: its `format` is {version!r}")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"record `{key}` has format v{version}, newer than this datarun reads (v{FORMAT_VERSION}); upgrade datarun"
        )
    return record


_MARKER_FORMAT = "datarun-store"


def store_marker() -> bytes:
    return dumps({"format": _MARKER_FORMAT, "version": STORE_FORMAT})


def check_store_marker(store_url: str, raw: bytes) -> None:
    """Refuse a store whose marker is unreadable (integrity) or names another format (usage)."""

    def corrupt(detail: str) -> IntegrityError:
        # Nothing is rewritten on the user's behalf: a damaged marker may mean a damaged store,
        # and guessing the version could let this datarun misread records a newer one wrote.
        return IntegrityError(
            f"store marker `{STORE_MARKER}` in store `{store_url}` is corrupt ({detail}); it must hold "
            f'{{"format": "{_MARKER_FORMAT}", "version": {STORE_FORMAT}}}: restore it from a backup, or, if a '
            "datarun of this version wrote the store, rewrite it with that content"
        )

    try:
        marker = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise corrupt(f"not JSON: {err}") from None
    if not isinstance(marker, dict):
        raise corrupt("not a JSON object")
    if marker.get("format") != _MARKER_FORMAT:
        raise corrupt(f"its `format` is {marker.get('format')!r}")
    version = marker.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise corrupt(f"its `version` is {version!r}")
    if version != STORE_FORMAT:
        raise UsageError(
            f"store `{store_url}` uses format v{version}; this datarun reads v{STORE_FORMAT}. Upgrade datarun."
        )


class Records:
    """The metadata store, read and written as records."""

    def __init__(self, meta: ObjectStore, workers: int = 16) -> None:
        self.meta = meta
        self.workers = workers
        self._format_checked = False

    def read(self, key: str, missing: str) -> Any:
        """One record; ``missing`` is the not-found message (name the thing, say the fix)."""
        self.check_read_format()
        try:
            raw, _ = self.meta.read(key)
        except ObjectNotFound:
            raise NotFoundError(missing) from None
        return decode(key, raw)

    def read_versioned(self, key: str) -> tuple[Any, str] | None:
        """A record with the ETag to compare-and-swap it against, or None if there is none."""
        self.check_read_format()
        try:
            raw, info = self.meta.read(key)
        except ObjectNotFound:
            return None
        return decode(key, raw), info.etag

    def read_all(self, prefix: str, keep: Callable[[str], bool] | None = None) -> Iterator[Any]:
        """Every record under ``prefix`` (in key order), or only those whose key ``keep`` accepts.

        The GETs run ``workers`` at a time, a window of keys at a time: on a cloud store a GET
        is a round trip, and one at a time made `label list` of 1,000 labels cost 1,000 of them.
        A record deleted between the LIST and its GET (a label moved off and removed, a repo
        deleted) is left out: the listing is of what exists when it is read."""
        self.check_read_format()
        yield from self.read_many(info.key for info in self.meta.list(prefix) if keep is None or keep(info.key))

    def read_many(self, keys: Iterable[str]) -> Iterator[Any]:
        """The records at ``keys`` that exist, in the order given, read as ``read_all`` reads."""
        self.check_read_format()
        keys = iter(keys)
        window = self.workers * 8
        with ThreadPoolExecutor(self.workers) as pool:
            while batch := list(itertools.islice(keys, window)):
                for key, raw in zip(batch, pool.map(self._read_present, batch), strict=True):
                    if raw is not None:
                        yield decode(key, raw)

    def _read_present(self, key: str) -> bytes | None:
        try:
            return self.meta.read(key)[0]
        except ObjectNotFound:
            return None

    def check_read_format(self) -> None:
        # Readers check the store marker too, once per client: a store written by a newer format
        # must be refused before its records are misread, not only before they are written.
        if not self._format_checked:
            self.check_format(create=False)
            self._format_checked = True

    def check_format(self, create: bool) -> None:
        """Refuse a store of another format; with ``create``, mark an unmarked store as ours."""
        try:
            raw, _ = self.meta.read(STORE_MARKER)
        except ObjectNotFound:
            if not create:
                return
            with contextlib.suppress(PreconditionFailed):  # another writer created it first
                self.meta.put_if_absent(STORE_MARKER, store_marker())
            return
        check_store_marker(self.meta.url, raw)
