"""One exception family for every expected failure, each tied to a documented exit code.

The CLI turns these into a single line on stderr and the exit code below; anything else is a
bug and gets a traceback only with ``--debug``. Messages name the thing and say how to fix it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``datarun`` CLI (also documented in README.md)."""

    OK = 0
    INTERNAL = 1  # a bug: please report it with the output of --debug
    USAGE = 2  # bad flags or arguments (click's own code)
    NOT_FOUND = 3  # unknown repo, bundle, label or file
    CONFLICT = 4  # already exists, label moved by someone else, destination not empty
    INTEGRITY = 5  # corrupt chunk/pack/manifest, unsafe path in a manifest
    STORE = 6  # the store is unreachable, refused access, or failed
    LOCAL_IO = 7  # a local path is missing, not permitted, or the disk is full
    INVALID = 8  # the bundle was invalidated (datarun invalidate); --allow-invalid uses it anyway
    RUN_FAILED = 9  # `run exec`: the command exited non-zero or did not write a declared output
    INTERRUPTED = 130  # SIGINT/SIGTERM; nothing half-done became visible


class DatarunError(Exception):
    """Base of all expected errors. ``str(err)`` is the one-line message shown to users."""

    exit_code: ExitCode = ExitCode.INTERNAL


class NotFoundError(DatarunError):
    exit_code = ExitCode.NOT_FOUND


class ConflictError(DatarunError):
    exit_code = ExitCode.CONFLICT


class IntegrityError(DatarunError):
    exit_code = ExitCode.INTEGRITY


class UnsafePathError(IntegrityError):
    """A manifest entry would write outside its destination (``..``, absolute, or a bad link)."""


class StoreError(DatarunError):
    exit_code = ExitCode.STORE


class LocalIOError(DatarunError):
    exit_code = ExitCode.LOCAL_IO


class UsageError(DatarunError):
    exit_code = ExitCode.USAGE


class InvalidatedError(DatarunError):
    """A download or mount of a bundle that an invalidation reached, without --allow-invalid."""

    exit_code = ExitCode.INVALID


class RunFailedError(DatarunError):
    """The command a run executed failed; its run record says Failed and nothing was uploaded."""

    exit_code = ExitCode.RUN_FAILED


# Store-level signals. Backends raise these; the repository layer translates them into the
# user-facing errors above with repo/bundle/label names attached.


class ObjectNotFound(NotFoundError):
    """The key does not exist in the object store."""

    def __init__(self, store: str, key: str) -> None:
        super().__init__(f"object `{key}` not found in store `{store}`")
        self.store = store
        self.key = key


class PreconditionFailed(ConflictError):
    """A create-only put found the key present, or a compare-and-swap found another ETag."""

    def __init__(self, store: str, key: str, detail: str) -> None:
        super().__init__(f"conditional write of `{key}` in store `{store}` failed: {detail}")
        self.store = store
        self.key = key
