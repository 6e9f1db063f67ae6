"""``datarun://REPO@REF/path`` parsed into its parts. Pure: no store is touched here."""

from __future__ import annotations

from dataclasses import dataclass

from datarun.errors import UnsafePathError, UsageError
from datarun.model import validate_relpath, validate_repo_name

PROTOCOL = "datarun"
_PREFIX = f"{PROTOCOL}://"


@dataclass(frozen=True, slots=True)
class BundleURL:
    repo: str
    ref: str  # a label or a bundle id
    path: str  # "" for the bundle's root

    def __str__(self) -> str:
        return f"{_PREFIX}{self.repo}@{self.ref}/{self.path}".rstrip("/")


def strip_protocol(url: str) -> str:
    """``REPO@REF/path``: what fsspec calls a path, without the scheme and outer slashes."""
    text = url[len(_PREFIX) :] if url.startswith(_PREFIX) else url
    return text.strip("/")


def parse_url(url: str) -> BundleURL:
    text = strip_protocol(url)
    head, _, path = text.partition("/")
    repo, at, ref = head.partition("@")
    if not at or not repo or not ref:
        raise UsageError(
            f"`{url}` does not name a bundle; write datarun://REPO@LABEL/path or datarun://REPO@BUNDLE_ID/path"
        )
    validate_repo_name(repo)
    if path:
        try:
            validate_relpath(path)
        except UnsafePathError:  # its message speaks of manifests; here the caller wrote the path
            raise UsageError(
                f"`{url}`: path `{path}` is not a clean relative path inside the bundle (no `..`, `.` or `//`)"
            ) from None
    return BundleURL(repo, ref, path)
