"""`--code PATH`: the identity of a task's source tree, the way luisy hashes a task's code."""

from __future__ import annotations

import os
from pathlib import Path

import blake3

from datarun.errors import LocalIOError

# Byte-compiled files and VCS folders change without the source changing.
_SKIP_DIRS = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def tree_hash(root: Path) -> str:
    """BLAKE3 over (relative path, mode's executable bit, content) of every file, in path
    order; symlinks by their target. mtimes are left out: a fresh checkout is the same code."""
    if not root.exists():
        raise LocalIOError(f"--code `{root}` does not exist; pass the task's source file or folder")
    hasher = blake3.blake3()
    paths = [root] if not root.is_dir() else sorted(_walk(root))
    for path in paths:
        rel = path.name if path == root else path.relative_to(root).as_posix()
        hasher.update(rel.encode() + b"\0")
        if path.is_symlink():
            hasher.update(b"l" + os.readlink(path).encode() + b"\0")
            continue
        hasher.update(b"x" if os.access(path, os.X_OK) else b"f")
        try:
            content = path.read_bytes()
        except OSError as err:
            raise LocalIOError(f"cannot read `{path}` for --code: {err.strerror}") from None
        hasher.update(len(content).to_bytes(8, "big") + content)
    return hasher.hexdigest()


def _walk(root: Path) -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        base = Path(folder)
        out += [base / f for f in files if not f.endswith(".pyc")]
        out += [base / d for d in dirs if (base / d).is_symlink()]
    return out
