"""Object stores and how a store URL becomes one.

``file:///path`` is the embedded default; ``memory://name`` is for tests. Cloud schemes
(``az://``, ``gs://``) plug in through ``_BACKENDS`` as optional extras.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from datarun.errors import LocalIOError, UsageError
from datarun.store.base import ObjectInfo, ObjectStore, Payload, payload_size
from datarun.store.local import LocalStore
from datarun.store.memory import MemoryStore

__all__ = [
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "Payload",
    "backend_for",
    "open_store",
    "payload_size",
]

# scheme -> (module, class, pip extra); imported lazily so a missing extra only hurts its users.
# The extra is named after the backend: it is also the class's ``backend_name``.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "az": ("datarun.store.azure", "AzureStore", "azure"),
    "gs": ("datarun.store.gcs", "GCSStore", "gcs"),
}


def open_store(url: str, credential_file: str = "") -> ObjectStore:
    """Turn a store URL (or a plain folder path) into an ObjectStore.

    ``credential_file`` is the config's ``credential``: a file, typically a mounted Kubernetes
    Secret, used only when the environment names no credentials of its own. For ``gs://`` it is
    a service-account key; for ``az://`` it holds a connection string.
    """
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
        env = _with_credential_file(parsed.scheme, credential_file)
        store: ObjectStore = getattr(module, class_name).from_url(url, env=env)
        return store
    supported = ", ".join(["file://", "memory://", *(f"{s}://" for s in _BACKENDS)])
    raise UsageError(f"unsupported store URL `{url}`: supported schemes are {supported}")


def backend_for(url: str) -> str:
    """The ``backend_name`` of the store that ``url`` opens, without opening it (so without
    credentials or imports); an unknown scheme is returned as it is."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file":
        return LocalStore.backend_name
    if scheme == "memory":
        return MemoryStore.backend_name
    return _BACKENDS[scheme][2] if scheme in _BACKENDS else scheme


# Variables that, when set, mean the environment has chosen credentials and a file must not override.
_CREDENTIAL_ENV = {
    "az": ("AZURE_STORAGE_CONNECTION_STRING", "DATARUN_AZURE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"),
}


def _with_credential_file(scheme: str, credential_file: str) -> Mapping[str, str]:
    env: Mapping[str, str] = os.environ
    if not credential_file or any(env.get(name, "").strip() for name in _CREDENTIAL_ENV.get(scheme, ())):
        return env
    path = Path(credential_file).expanduser()
    if scheme == "gs":
        return {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(path)}
    try:
        connection_string = path.read_text().strip()
    except OSError as err:
        raise LocalIOError(
            f"cannot read the credential file `{path}` named by the config: {err.strerror}; "
            "fix the path with `datarun config create --credential PATH`"
        ) from None
    return {**env, "AZURE_STORAGE_CONNECTION_STRING": connection_string}
