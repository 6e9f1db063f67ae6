"""A wrapper that counts the primitives called on a real store.

Not a mock: every call goes on to the wrapped store (a LocalStore, an emulator's store). The
wrapper only hides ``local_path``, so whatever uses it reads through the store the way it does
from a cloud store. Tests assert on ``calls``; ``bench/bench_mount_errors.py`` reports them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from datarun.store import ObjectInfo, ObjectStore, Payload


class CountingStore(ObjectStore):
    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: Counter[str] = Counter()
        self.prefixes: list[str] = []  # what each list asked for (the catalog's sync lists one slice)
        self.folder_prefixes: list[str] = []  # and each list_folders

    def put(self, key: str, payload: Payload) -> ObjectInfo:
        self.calls["put"] += 1
        return self.inner.put(key, payload)

    def put_if_absent(self, key: str, payload: Payload) -> ObjectInfo:
        self.calls["put_if_absent"] += 1
        return self.inner.put_if_absent(key, payload)

    def put_if_match(self, key: str, payload: Payload, etag: str) -> ObjectInfo:
        self.calls["put_if_match"] += 1
        return self.inner.put_if_match(key, payload, etag)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        self.calls["read"] += 1
        return self.inner.read(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.calls["get_range"] += 1
        return self.inner.get_range(key, start, length)

    def head(self, key: str) -> ObjectInfo:
        self.calls["head"] += 1
        return self.inner.head(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        self.prefixes.append(prefix)
        return self.inner.list(prefix, start_after)

    def list_folders(self, prefix: str) -> Iterator[str]:
        self.calls["list_folders"] += 1
        self.folder_prefixes.append(prefix)
        return self.inner.list_folders(prefix)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def staging_dir(self) -> Path | None:
        return self.inner.staging_dir()

    def close(self) -> None:
        self.inner.close()
