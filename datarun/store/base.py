"""The ObjectStore protocol: the handful of primitives every backend implements.

Everything above this layer (packs, manifests, bundles, labels) is built from these calls, so
a new backend is a few hundred lines and the shared contract suite in tests/store proves it.
The primitives map one-to-one onto what Azure Blob and GCS offer natively:

==================  ==============================  =================================
primitive           Azure Blob                      GCS
==================  ==============================  =================================
put                 upload_blob(overwrite=True)     upload
put_if_absent       If-None-Match: *                ifGenerationMatch=0
put_if_match        If-Match: <etag>                ifGenerationMatch=<generation>
read / get_range    download_blob(offset, length)   download(start, end)
list(start_after)   list_blobs + marker filter      list_blobs(start_offset)
list_folders        list_blobs(delimiter="/")       list_blobs(delimiter="/")
delete              delete_blob                     delete
==================  ==============================  =================================

``list_folders`` has a default built on ``list``, so a backend is correct without it; the three
here override it, because finding the repos of a store by listing every key under ``repos/``
costs a request per 5,000 keys of the whole store.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from datarun.errors import UsageError

Payload = bytes | bytearray | memoryview | Path
"""What ``put`` accepts: bytes in memory, or a file that is streamed (never read whole)."""

_KEY_RE = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")


def validate_key(key: str) -> str:
    parts = key.split("/")
    if not _KEY_RE.match(key) or any(p in ("", ".", "..") for p in parts) or len(key) > 1024:
        raise UsageError(f"invalid object key `{key}`")
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # opaque version token: an ETag on Azure, a generation on GCS


class ObjectSink(ABC):
    """One object written piece by piece, invisible to every reader (and every listing) until
    ``commit``. A writer that dies or calls ``abort`` leaves nothing anyone can see."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; may return before it has reached the store. ``data`` is copied."""

    @abstractmethod
    def commit(self) -> ObjectInfo:
        """Wait for every piece, then make the object visible at once."""

    @abstractmethod
    def abort(self) -> None:
        """Give up: nothing becomes visible. Safe to call more than once, and after a failure."""


class ObjectStore(ABC):
    """A flat key space of immutable-or-CAS objects. Keys use ``/`` as a separator."""

    url: str
    backend_name: ClassVar[str] = ""
    """Which backend this is (``local``, ``memory``, ``azure``, ``gcs``): what ``datarun config show``
    prints, and what ``backend_for`` says of a URL without opening it."""

    @abstractmethod
    def put(self, key: str, payload: Payload) -> ObjectInfo:
        """Write ``key`` unconditionally (last writer wins). Used for content-addressed data."""

    @abstractmethod
    def put_if_absent(self, key: str, payload: Payload) -> ObjectInfo:
        """Create ``key``; raise PreconditionFailed if it exists. Exactly one of N racers wins."""

    @abstractmethod
    def put_if_match(self, key: str, payload: Payload, etag: str) -> ObjectInfo:
        """Replace ``key`` only if its current version is ``etag``; raise PreconditionFailed
        if it changed, and ObjectNotFound if it vanished."""

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        """Read a small object whole, with the version token that was read (one round trip)."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes at ``start``. Short only at the end of the object."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and version of ``key``; raise ObjectNotFound if absent."""

    @abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Keys starting with ``prefix``, in byte order, strictly after ``start_after``.
        Backends page internally; callers just iterate."""

    def list_folders(self, prefix: str) -> Iterator[str]:
        """The folders directly under ``prefix`` (``""`` or ending in ``/``) that hold at least one
        key, each as ``prefix + name + "/"``, in byte order: a delimiter listing's common
        prefixes. This default walks every key below ``prefix``."""
        check_folder_prefix(prefix)
        last = ""
        for info in self.list(prefix):
            cut = info.key.find("/", len(prefix))
            if cut >= 0 and info.key[: cut + 1] != last:
                last = info.key[: cut + 1]
                yield last

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting an absent key is not an error."""

    def local_path(self, key: str = "") -> Path | None:
        """Where ``key`` is (or would be) a file on this machine, or with no key the folder that
        holds the store; None for every store that is not a folder here. A reader may map such
        files instead of copying them through ``get_range``."""
        return None

    def staging_dir(self) -> Path | None:
        """A folder on the same filesystem as the store, if any, so a spooled pack can be
        renamed into place instead of copied. Remote stores return None."""
        return None

    def open_sink(self, key: str) -> ObjectSink | None:
        """A staged write of ``key`` for stores that can take an object in pieces before it is
        complete (Azure blocks); None where writers spool to a file and ``put`` it instead."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release connections and thread pools."""

    def exists(self, key: str) -> bool:
        from datarun.errors import ObjectNotFound

        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def check_folder_prefix(prefix: str) -> None:
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"list_folders takes a folder (ending in `/`), not `{prefix}`")


def payload_size(payload: Payload) -> int:
    if isinstance(payload, Path):
        return payload.stat().st_size
    return len(payload)
