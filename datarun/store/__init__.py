"""Object stores and how a store URL becomes one.

``file:///path`` is the embedded default; ``memory://name`` is for tests. Cloud schemes
(``az://``, ``gs://``) plug in through ``_BACKENDS`` as optional extras.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import unquote, urlparse

from datarun.errors import UsageError
from datarun.store.base import ObjectInfo, ObjectStore, Payload, payload_size
from datarun.store.local import LocalStore
from datarun.store.memory import MemoryStore

__all__ = ["LocalStore", "MemoryStore", "ObjectInfo", "ObjectStore", "Payload", "open_store", "payload_size"]

# scheme -> (module, class, pip extra); imported lazily so a missing extra only hurts its users.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "az": ("datarun.store.azure", "AzureStore", "azure"),
    "gs": ("datarun.store.gcs", "GCSStore", "gcs"),
}


def open_store(url: str) -> ObjectStore:
    """Turn a store URL (or a plain folder path) into an ObjectStore."""
    if "://" not in url:
        return LocalStore(Path(url))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"store URL `{url}`: use file:///absolute/path (three slashes)")
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "memory":
        return MemoryStore.named(parsed.netloc + parsed.path)
    if parsed.scheme in _BACKENDS:
        module_name, class_name, extra = _BACKENDS[parsed.scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(
                f"store URL `{url}` needs the `{extra}` extra: pip install 'datarun[{extra}]' ({err})"
            ) from None
        store: ObjectStore = getattr(module, class_name).from_url(url)
        return store
    supported = ", ".join(["file://", "memory://", *(f"{s}://" for s in _BACKENDS)])
    raise UsageError(f"unsupported store URL `{url}`: supported schemes are {supported}")
