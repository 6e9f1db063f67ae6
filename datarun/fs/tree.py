"""A bundle's folder tree, indexed once from its manifest for listing and lookup.

Bundles are immutable, so an index built for a manifest id stays right forever; callers
keep one per bundle. Only paths, kinds and sizes are kept decoded; a file's chunk refs stay
raw JSON until the file is opened, so a bundle of a million files costs little to index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from datarun.model import DIRECTORY, FILE, SYMLINK, FileEntry


@dataclass(frozen=True, slots=True)
class Node:
    path: str
    kind: str  # model.FILE, DIRECTORY or SYMLINK
    size: int
    mtime_ns: int
    target: str = ""


class BundleTree:
    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self._nodes: dict[str, Node] = {"": Node("", DIRECTORY, 0, 0)}
        self._raw: dict[str, dict[str, Any]] = {}
        self._children: dict[str, list[str]] = {"": []}
        for raw in records:
            path = str(raw["p"])
            kind = str(raw["k"])
            self._add_parents(path)
            node = Node(path, kind, int(raw.get("s", 0)), int(raw.get("t", 0)), str(raw.get("l", "")))
            if path not in self._nodes:
                self._children[_parent(path)].append(path)
            self._nodes[path] = node
            if kind == DIRECTORY:
                self._children.setdefault(path, [])
            elif kind == FILE:
                self._raw[path] = raw

    def _add_parents(self, path: str) -> None:
        # Manifests list folders before their content, but an implicit parent costs nothing to allow.
        parent = _parent(path)
        if parent in self._nodes:
            return
        self._add_parents(parent)
        self._nodes[parent] = Node(parent, DIRECTORY, 0, 0)
        self._children[_parent(parent)].append(parent)
        self._children[parent] = []

    def node(self, path: str) -> Node | None:
        return self._nodes.get(path.strip("/"))

    def children(self, path: str) -> list[Node] | None:
        """The entries right inside folder ``path`` in tree order, or None if it is no folder."""
        names = self._children.get(path.strip("/"))
        if names is None:
            return None
        return [self._nodes[name] for name in names]

    def entry(self, path: str) -> FileEntry | None:
        """The file's full entry (chunk refs checked as FileEntry.from_json checks them)."""
        raw = self._raw.get(path.strip("/"))
        return FileEntry.from_json(raw) if raw is not None else None

    def files(self, folder: str = "") -> Iterable[Node]:
        """Every file and link under ``folder``, depth first."""
        stack = list(reversed(self.children(folder) or []))
        while stack:
            node = stack.pop()
            if node.kind == DIRECTORY:
                stack.extend(reversed(self.children(node.path) or []))
            elif node.kind in (FILE, SYMLINK):
                yield node


def _parent(path: str) -> str:
    return path.rpartition("/")[0]
