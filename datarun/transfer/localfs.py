"""The local side of a transfer: walking a folder tree, and errors that name the local path.

Messages say which path failed and what to do, so a full disk or a missing permission is an
exit-7 line, not a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from datarun.errors import LocalIOError
from datarun.model import DIRECTORY, FILE, SYMLINK


def local_io_error(err: OSError, path: Path | str, action: str) -> LocalIOError:
    hint = {
        errno.ENOENT: "check that the path exists",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
        errno.ENOSPC: "free some disk space or choose another destination",
        errno.EDQUOT: "free some disk space or raise the quota",
        errno.EROFS: "the filesystem is read-only",
        errno.ENOTDIR: "a path component is a file, not a folder",
    }.get(err.errno or 0, "check the path")
    return LocalIOError(f"cannot {action} `{path}`: {err.strerror or err}; {hint}")


def require_utf8(where: str, text: str, what: str) -> None:
    """Manifests store names as UTF-8 JSON; os.scandir hands undecodable bytes over as surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(where).decode("utf-8", "backslashreplace")
        raise LocalIOError(
            f"the {what} of `{shown}` is not valid UTF-8, and bundles keep names as UTF-8; rename it "
            "(e.g. `convmv -f latin1 -t utf8 --notest`) or leave it out of the folder"
        ) from None


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result, str]]:
    """Yield (relative path, lstat, kind) in tree order: depth first, names sorted."""

    def walk(folder: Path, rel: str) -> Iterator[tuple[str, os.stat_result, str]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise local_io_error(err, folder, "read folder") from None
        for entry in entries:
            path = f"{rel}{entry.name}"
            require_utf8(entry.path, entry.name, "file name")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                raise local_io_error(err, entry.path, "stat") from None
            if stat.S_ISDIR(st.st_mode):
                yield path, st, DIRECTORY
                yield from walk(Path(entry.path), path + "/")
            elif stat.S_ISREG(st.st_mode):
                yield path, st, FILE
            elif stat.S_ISLNK(st.st_mode):
                yield path, st, SYMLINK
            else:
                yield path, st, "other"

    return walk(root, "")
