"""The ``datarun://`` fsspec filesystem: read-only, over the public ``Client`` API.

Paths are ``REPO@REF/path/in/bundle``. A label is resolved once per filesystem instance and
``label_ttl`` seconds (default 5), so the many ``info``/``ls`` calls of one dataset read see
one bundle, and a long-lived process still sees a label move; a bundle id never moves. Each
bundle's tree is indexed once (bundles are immutable).

storage_options: ``store`` and ``blob_store`` (URLs, else DATARUN_STORE / the config file /
the default, as for the CLI), or ``client`` (an open ``datarun.repo.Client``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from fsspec.spec import AbstractFileSystem

from datarun.errors import NotFoundError
from datarun.fs.reader import BundleReader, resolve_ref
from datarun.fs.tree import BundleTree, Node
from datarun.fs.url import PROTOCOL, parse_url, strip_protocol
from datarun.model import DIRECTORY, FILE, Bundle
from datarun.repo import Client, connect

_TREES_KEPT = 8


class DatarunFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self,
        store: str | None = None,
        blob_store: str | None = None,
        client: Client | None = None,
        label_ttl: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client if client is not None else connect(store, blob_store=blob_store)
        self.label_ttl = label_ttl
        self._labels: dict[tuple[str, str], tuple[float, Bundle]] = {}
        self._trees: OrderedDict[str, BundleTree] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path: str | list[str]) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return strip_protocol(str(path))

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{name}"

    # -- resolution --------------------------------------------------------------------------

    def bundle(self, repo: str, ref: str) -> Bundle:
        now = time.monotonic()
        with self._lock:
            found = self._labels.get((repo, ref))
        if found is not None and now - found[0] < self.label_ttl:
            return found[1]
        bundle = resolve_ref(self.client, repo, ref)
        with self._lock:
            self._labels[(repo, ref)] = (now if bundle.id != ref else float("inf"), bundle)
        return bundle

    def tree(self, bundle: Bundle) -> BundleTree:
        with self._lock:
            tree = self._trees.get(bundle.manifest)
            if tree is not None:
                self._trees.move_to_end(bundle.manifest)
                return tree
        tree = BundleTree(self.client.list_records(bundle))
        with self._lock:
            self._trees[bundle.manifest] = tree
            while len(self._trees) > _TREES_KEPT:
                self._trees.popitem(last=False)
        return tree

    def _locate(self, path: str) -> tuple[str, Bundle, BundleTree, str]:
        url = parse_url(path)
        try:
            bundle = self.bundle(url.repo, url.ref)
        except NotFoundError as err:
            raise FileNotFoundError(str(err)) from None
        return f"{url.repo}@{url.ref}", bundle, self.tree(bundle), url.path

    # -- fsspec ------------------------------------------------------------------------------

    def _info(self, prefix: str, node: Node) -> dict[str, Any]:
        name = f"{prefix}/{node.path}" if node.path else prefix
        if node.kind == DIRECTORY:
            return {"name": name, "size": 0, "type": "directory"}
        kind = "file" if node.kind == FILE else "other"
        info: dict[str, Any] = {"name": name, "size": node.size, "type": kind, "mtime": node.mtime_ns / 1e9}
        if node.target:
            info["destination"] = node.target
        return info

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        prefix, bundle, tree, rel = self._locate(self._strip_protocol(path))
        node = tree.node(rel)
        if node is None:
            raise FileNotFoundError(f"`{path}` not found in bundle `{bundle.id}` of repo `{bundle.repo}`")
        children = tree.children(rel)
        nodes = [node] if children is None else children
        infos = [self._info(prefix, n) for n in nodes]
        return infos if detail else [i["name"] for i in infos]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        prefix, bundle, tree, rel = self._locate(self._strip_protocol(path))
        node = tree.node(rel)
        if node is None:
            raise FileNotFoundError(f"`{path}` not found in bundle `{bundle.id}` of repo `{bundle.repo}`")
        return self._info(prefix, node)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BundleReader:
        if mode != "rb":
            raise PermissionError(f"datarun:// is read-only; `{path}` can only be opened with mode `rb`, not `{mode}`")
        _, bundle, tree, rel = self._locate(self._strip_protocol(path))
        entry = tree.entry(rel)
        if entry is None:
            node = tree.node(rel)
            if node is not None and node.kind == DIRECTORY:
                raise IsADirectoryError(f"`{path}` is a folder of bundle `{bundle.id}`")
            raise FileNotFoundError(f"`{path}` not found in bundle `{bundle.id}` of repo `{bundle.repo}`")
        return BundleReader(self.client, entry, name=f"{PROTOCOL}://{self._strip_protocol(path)}")

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        with self._open(path) as handle:
            size = handle.size
            lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            hi = size if end is None else (end if end >= 0 else max(size + end, 0))
            return handle.pread(lo, max(hi - lo, 0))

    def modified(self, path: str) -> datetime:
        # DuckDB asks for it to decide whether its cache is fresh. A file's recorded mtime, or for a
        # folder the bundle's creation time: both are fixed for the bundle's life.
        _, bundle, tree, rel = self._locate(self._strip_protocol(path))
        node = tree.node(rel)
        if node is None:
            raise FileNotFoundError(f"`{path}` not found in bundle `{bundle.id}` of repo `{bundle.repo}`")
        if node.kind != DIRECTORY and node.mtime_ns:
            return datetime.fromtimestamp(node.mtime_ns / 1e9, UTC)
        return datetime.fromisoformat(bundle.created)

    created = modified

    def ukey(self, path: str) -> str:
        # Content never changes under a bundle id: the manifest id plus the path is the key.
        _, bundle, _, rel = self._locate(self._strip_protocol(path))
        return f"{bundle.manifest}/{rel}"

    # Writing: everything that would change a bundle is refused (bundles are immutable).
    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("datarun:// is read-only: upload a new bundle with `datarun bundle upload`")

    rm_file = _refuse
    rm = _refuse
    mkdir = _refuse
    makedirs = _refuse
    rmdir = _refuse
    cp_file = _refuse
    mv = _refuse
    touch = _refuse
    pipe_file = _refuse
    put_file = _refuse
