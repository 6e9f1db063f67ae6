"""The nouns of datarun as frozen, typed records with their JSON forms.

Everything stored is versioned (``FORMAT_VERSION``) and described in FORMAT.md. Parsing is
strict: a record with a missing field or a path that escapes its folder raises, so corrupt
or hostile metadata never reaches the code that writes files.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from datarun.errors import IntegrityError, UnsafePathError, UsageError

FORMAT_VERSION = 1

_REPO_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_repo_name(name: str) -> str:
    if not _REPO_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid repo name `{name}`: use 1-63 lowercase letters, digits, `.`, `_` or `-`, "
            "starting with a letter or digit"
        )
    return name


def validate_label_name(name: str) -> str:
    if not _LABEL_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid label `{name}`: use 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )
    return name


def validate_relpath(path: str) -> str:
    """Return ``path`` if it is a clean relative POSIX path that stays inside its folder.

    Called on every manifest entry that is read, not only written: a manifest from a
    compromised or buggy writer must not make ``download`` write outside ``--destination``.
    Checking components directly is what normalisation would do, minus its cost: this runs
    once per entry, millions of times for big bundles.
    """
    if not path or "\x00" in path or "\\" in path:
        raise UnsafePathError(f"unsafe path {path!r} in manifest: empty, NUL or backslash")
    if path[0] == "/":
        raise UnsafePathError(f"unsafe path {path!r} in manifest: absolute paths are refused")
    # A `.` or `..` component starts the path or follows a slash; testing for that first skips
    # the split for the common `name.ext` paths.
    dotted = path[0] == "." or "/." in path
    if "//" in path or path[-1] == "/" or (dotted and any(part in (".", "..") for part in path.split("/"))):
        raise UnsafePathError(f"unsafe path {path!r} in manifest: `..`, `.` or empty components are refused")
    return path


def validate_link_target(path: str, target: str) -> str:
    """A symlink may point only inside the bundle, relative to its own folder.

    Its `..` steps must all come first (``../../a/b``, never ``a/../b``). The lexical check alone
    let a chain escape: with ``a/b -> ..``, the link ``c -> a/b/..`` normalises to ``a`` but goes
    through ``a/b`` to the bundle's parent. Leading `..` steps climb real folders, since every
    entry's own path is a real one; the names after them only go down, and each link met on the way
    obeys the same rule, so no chain can climb out.
    """
    if not target or target.startswith("/") or "\x00" in target:
        raise UnsafePathError(f"unsafe symlink {path!r} -> {target!r}: absolute or empty targets are refused")
    parts = target.split("/")
    first_name = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    if ".." in parts[first_name:]:
        raise UnsafePathError(
            f"unsafe symlink {path!r} -> {target!r}: `..` after a name could climb through another link; "
            "put every `..` first"
        )
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafePathError(f"unsafe symlink {path!r} -> {target!r}: it points outside the bundle")
    return target


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where one chunk of a file lives: its plaintext hash and its frame inside a pack."""

    digest: bytes  # BLAKE3 of the plaintext, 32 bytes
    pack: str  # hex BLAKE3 of the pack object
    offset: int  # byte offset of the frame inside the pack
    stored_size: int  # bytes of the frame as stored (compressed or raw)
    size: int  # plaintext bytes
    compressed: bool

    def to_json(self) -> list[Any]:
        return [self.digest.hex(), self.pack, self.offset, self.stored_size, self.size, int(self.compressed)]

    @staticmethod
    def from_json(raw: Any) -> ChunkRef:
        try:
            digest, pack, offset, stored, size, flags = raw
            ref = ChunkRef(bytes.fromhex(digest), str(pack), int(offset), int(stored), int(size), bool(flags))
        except (TypeError, ValueError) as err:
            raise IntegrityError(f"malformed chunk reference {raw!r} in manifest: {err}") from None
        if len(ref.digest) != 32 or ref.offset < 0 or ref.stored_size < 0 or ref.size < 0:
            raise IntegrityError(f"malformed chunk reference {raw!r} in manifest")
        return ref


FILE = "f"
DIRECTORY = "d"
SYMLINK = "l"


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    kind: str = FILE
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    target: str = ""  # symlink target

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"p": self.path, "k": self.kind, "m": self.mode, "t": self.mtime_ns}
        if self.kind == FILE:
            out["s"] = self.size
            out["c"] = [c.to_json() for c in self.chunks]
        elif self.kind == SYMLINK:
            out["l"] = self.target
        return out

    @staticmethod
    def from_json(raw: dict[str, Any]) -> FileEntry:
        try:
            path = validate_relpath(str(raw["p"]))
            kind = str(raw["k"])
            mode = int(raw["m"]) & 0o7777
            mtime = int(raw.get("t", 0))
            if kind == FILE:
                chunks = tuple(ChunkRef.from_json(c) for c in raw["c"])
                size = int(raw["s"])
                if sum(c.size for c in chunks) != size:
                    raise IntegrityError(f"manifest entry `{path}`: chunk sizes do not add up to {size}")
                return FileEntry(path, FILE, size, mode, mtime, chunks)
            if kind == DIRECTORY:
                return FileEntry(path, DIRECTORY, 0, mode, mtime)
            if kind == SYMLINK:
                target = validate_link_target(path, str(raw["l"]))
                return FileEntry(path, SYMLINK, 0, mode, mtime, (), target)
        except (KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"malformed manifest entry {raw!r}: {err}") from None
        raise IntegrityError(f"manifest entry `{path}` has unknown kind {kind!r}")


@dataclass(frozen=True, slots=True)
class BundleRef:
    repo: str
    bundle: str

    def to_json(self) -> dict[str, str]:
        return {"repo": self.repo, "bundle": self.bundle}


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The run that produced a bundle, as the sidecars record it (sidecar/PROTOCOL.md, Provenance)."""

    run_id: str = ""
    command: tuple[str, ...] = ()
    image: str = ""
    exit_code: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """Any JSON values (a DataRun's ``spec.params``); records written before held strings only."""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": list(self.command),
            "image": self.image,
            "exit_code": self.exit_code,
            "params": dict(self.params),
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> RunRecord:
        return RunRecord(
            run_id=str(raw.get("run_id", "")),
            command=tuple(str(c) for c in raw.get("command", [])),
            image=str(raw.get("image", "")),
            exit_code=raw.get("exit_code"),
            params={str(k): v for k, v in (raw.get("params") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Provenance:
    author_name: str = ""
    author_email: str = ""
    host: str = ""
    inputs: tuple[BundleRef, ...] = ()
    run: RunRecord | None = None
    # The upload's transfer summary (datarun.summary.TransferSummary.to_json()); {} if unknown.
    transfer: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "author": {"name": self.author_name, "email": self.author_email},
            "host": self.host,
            "inputs": [i.to_json() for i in self.inputs],
            "run": self.run.to_json() if self.run else None,
        }
        if self.transfer:
            out["transfer"] = dict(self.transfer)
        return out

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Provenance:
        author = raw.get("author", {})
        run = raw.get("run")
        return Provenance(
            author_name=str(author.get("name", "")),
            author_email=str(author.get("email", "")),
            host=str(raw.get("host", "")),
            inputs=tuple(BundleRef(str(i["repo"]), str(i["bundle"])) for i in raw.get("inputs", [])),
            run=RunRecord.from_json(run) if run else None,
            transfer=dict(raw["transfer"]) if isinstance(raw.get("transfer"), dict) else {},
        )


@dataclass(frozen=True, slots=True)
class Repo:
    name: str
    description: str
    created: str
    creator: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "created": self.created,
            "creator": self.creator,
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Repo:
        try:
            return Repo(
                str(raw["name"]), str(raw.get("description", "")), str(raw["created"]), str(raw.get("creator", ""))
            )
        except (KeyError, TypeError) as err:
            raise IntegrityError(f"malformed repo record: {err}") from None


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    repo: str
    message: str
    created: str
    manifest: str  # hex BLAKE3 of the manifest plaintext
    file_count: int
    total_size: int
    provenance: Provenance = Provenance()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "id": self.id,
            "repo": self.repo,
            "message": self.message,
            "created": self.created,
            "manifest": self.manifest,
            "file_count": self.file_count,
            "total_size": self.total_size,
            "provenance": self.provenance.to_json(),
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Bundle:
        try:
            return Bundle(
                id=str(raw["id"]),
                repo=str(raw["repo"]),
                message=str(raw.get("message", "")),
                created=str(raw["created"]),
                manifest=str(raw["manifest"]),
                file_count=int(raw["file_count"]),
                total_size=int(raw["total_size"]),
                provenance=Provenance.from_json(raw.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"malformed bundle record: {err}") from None


@dataclass(frozen=True, slots=True)
class Label:
    repo: str
    name: str
    bundle: str
    seq: int  # 1 for the first assignment, +1 for every move; history/<seq> records each one
    time: str
    author: str = ""
    previous: str = ""  # the bundle the label pointed to before this move

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "repo": self.repo,
            "name": self.name,
            "bundle": self.bundle,
            "seq": self.seq,
            "time": self.time,
            "author": self.author,
            "previous": self.previous,
        }

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Label:
        try:
            return Label(
                str(raw["repo"]),
                str(raw["name"]),
                str(raw["bundle"]),
                int(raw["seq"]),
                str(raw["time"]),
                str(raw.get("author", "")),
                str(raw.get("previous", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"malformed label record: {err}") from None
