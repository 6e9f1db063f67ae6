"""An in-process store for tests and for the contract suite's reference behaviour."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

from datarun.errors import ObjectNotFound, PreconditionFailed
from datarun.store.base import ObjectInfo, ObjectStore, Payload, validate_key

_NAMED: dict[str, MemoryStore] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(ObjectStore):
    backend_name = "memory"

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._versions = itertools.count(1)

    @staticmethod
    def named(name: str) -> MemoryStore:
        """The same store for the same name within a process, like a bucket."""
        with _NAMED_LOCK:
            if name not in _NAMED:
                _NAMED[name] = MemoryStore(name)
            return _NAMED[name]

    def _materialise(self, payload: Payload) -> bytes:
        if isinstance(payload, Path):
            return payload.read_bytes()
        return bytes(payload)

    def _store(self, key: str, data: bytes) -> ObjectInfo:
        etag = str(next(self._versions))
        self._objects[key] = (data, etag)
        return ObjectInfo(key, len(data), etag)

    def put(self, key: str, payload: Payload) -> ObjectInfo:
        validate_key(key)
        data = self._materialise(payload)
        with self._lock:
            return self._store(key, data)

    def put_if_absent(self, key: str, payload: Payload) -> ObjectInfo:
        validate_key(key)
        data = self._materialise(payload)
        with self._lock:
            if key in self._objects:
                raise PreconditionFailed(self.url, key, "it already exists")
            return self._store(key, data)

    def put_if_match(self, key: str, payload: Payload, etag: str) -> ObjectInfo:
        validate_key(key)
        data = self._materialise(payload)
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                raise ObjectNotFound(self.url, key)
            if current[1] != etag:
                raise PreconditionFailed(self.url, key, "it was changed by another writer")
            return self._store(key, data)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(self.url, key)
        data, etag = found
        return data, ObjectInfo(key, len(data), etag)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data, _ = self.read(key)
        return data[start : start + length]

    def head(self, key: str) -> ObjectInfo:
        return self.read(key)[1]

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            snapshot = sorted((k, len(v[0]), v[1]) for k, v in self._objects.items() if k.startswith(prefix))
        for key, size, etag in snapshot:
            if start_after is None or key > start_after:
                yield ObjectInfo(key, size, etag)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)
