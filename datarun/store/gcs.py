"""Google Cloud Storage backend: ``gs://<bucket>[/<prefix>]``.

Credentials, first match wins:

1. ``STORAGE_EMULATOR_HOST`` (fake-gcs-server and friends): anonymous, project ``test``;
2. ``GOOGLE_APPLICATION_CREDENTIALS``: a service-account key file;
3. Application Default Credentials (workload identity, the metadata server, ``gcloud auth``).

The version token is the object's *generation*: create-only is ``ifGenerationMatch=0`` and
compare-and-swap ``ifGenerationMatch=<generation>``. Only upload preconditions are relied on
(fake-gcs-server ignores them on delete, patch and compose). Every call passes ``retry=None``
so the SDK's two-minute retry loop is off and retry.py's bounded one is the only one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

import google.auth
import requests
import urllib3
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud.storage import Client as StorageClient

from datarun.errors import DatarunError, LocalIOError, ObjectNotFound, StoreError, UsageError
from datarun.store.base import ObjectInfo, Payload, payload_size
from datarun.store.cloud import CloudStore, Connection, Page, pooled
from datarun.store.retry import describe_network_error, is_transient_status, redact, short

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)

CREDENTIAL_VARS = (
    "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or Application Default Credentials "
    "(workload identity, `gcloud auth application-default login`)"
)

# Objects above this size go up as resumable uploads in chunks of this size, read from the file
# one chunk at a time; smaller ones are one multipart request. A multiple of 256 KiB, as GCS wants.
CHUNK_SIZE = 8 << 20


@dataclass(frozen=True)
class GCSAuth:
    """The endpoint and credentials to use; ``repr`` shows no secret."""

    endpoint: str | None  # None: the public GCS endpoint
    project: str | None
    source: str  # which setting was used, for messages
    credentials: Credentials = field(repr=False)


def resolve_auth(env: Mapping[str, str] | None = None) -> GCSAuth:
    env = os.environ if env is None else env
    emulator = env.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if emulator:
        if "://" not in emulator:
            emulator = f"http://{emulator}"
        return GCSAuth(emulator, "test", "STORAGE_EMULATOR_HOST", AnonymousCredentials())  # type: ignore[no-untyped-call]
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if key_file:
        from google.oauth2 import service_account

        try:
            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                key_file, scopes=_SCOPES
            )
        except (OSError, ValueError) as err:
            # ValueError text can quote the file's fields; say only what is wrong and where.
            why = err.strerror if isinstance(err, OSError) else "not a service-account key file"
            raise StoreError(
                f"GOOGLE_APPLICATION_CREDENTIALS=`{key_file}`: {why}; point it at a service-account JSON key "
                "or unset it to use Application Default Credentials"
            ) from None
        return GCSAuth(None, creds.project_id, "GOOGLE_APPLICATION_CREDENTIALS", creds)
    try:
        creds, project = google.auth.default(scopes=_SCOPES)
    except auth_exc.DefaultCredentialsError:
        raise StoreError(f"no Google Cloud credentials found; set {CREDENTIAL_VARS}") from None
    return GCSAuth(None, project, "Application Default Credentials", creds)


def _status(err: BaseException) -> int | None:
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def _transient(err: BaseException) -> str | None:
    if isinstance(err, gexc.GoogleAPICallError):
        status = _status(err)
        return f"HTTP {status} {short(err.message or '', 80)}".strip() if is_transient_status(status) else None
    if isinstance(err, auth_exc.RefreshError):
        return None  # wrong or revoked credentials: retrying cannot help
    if isinstance(err, auth_exc.TransportError | ConnectionError | TimeoutError):
        return describe_network_error(err) or redact(short(str(err)))
    if isinstance(err, requests.RequestException) and not isinstance(err, requests.HTTPError):
        return describe_network_error(err) or redact(short(str(err)))
    if isinstance(err, urllib3.exceptions.HTTPError):
        return describe_network_error(err) or redact(short(str(err)))
    if type(err).__name__ in ("InvalidResponse", "DataCorruption"):
        # Raised by the media layer before it maps statuses: a 5xx mid-upload, or a body that
        # failed its checksum on the way.
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        if type(err).__name__ == "DataCorruption" or is_transient_status(status):
            return f"HTTP {status}" if status else "corrupted transfer"
    return None


class GCSStore(CloudStore):
    backend_name = "gcs"
    scheme = "gs"
    bucket_word = "bucket"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        auth: GCSAuth,
        **connection: Unpack[Connection],
    ) -> None:
        if not _BUCKET_RE.match(bucket):
            raise UsageError(f"`{bucket}` is not a GCS bucket name: use lowercase letters, digits, `-`, `_` and `.`")
        super().__init__(bucket, prefix, _transient, **connection)
        self.bucket_name = bucket
        self.auth = auth
        # max_retries=0 keeps urllib3 from retrying while still letting requests wrap its errors
        # (total=False would leak raw urllib3 exceptions).
        session = pooled(AuthorizedSession(auth.credentials), self.pool_size, 0)  # type: ignore[no-untyped-call]
        options = {"api_endpoint": auth.endpoint} if auth.endpoint else None
        self._client = StorageClient(
            project=auth.project, credentials=auth.credentials, _http=session, client_options=options
        )
        self._bucket = self._client.bucket(bucket)
        self._bucket_seen = False  # set once the bucket is known to exist, to skip re-checking

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None, **options: Any) -> GCSStore:
        bucket, prefix = cls.split_url(url)
        return cls(bucket, prefix, auth=resolve_auth(env), **options)

    # -- reading the SDK's errors --------------------------------------------------------

    def _endpoint(self) -> str:
        return f"{self.auth.endpoint} (from STORAGE_EMULATOR_HOST)" if self.auth.endpoint else "storage.googleapis.com"

    def _lost_race(self, err: BaseException, *, creating: bool) -> bool:
        return isinstance(err, gexc.PreconditionFailed)

    def _absent(self, err: BaseException) -> bool:
        return isinstance(err, gexc.NotFound) and self._bucket_exists()

    def _past_end(self, err: BaseException) -> bool:
        return isinstance(err, gexc.RequestRangeNotSatisfiable)

    def _may_match(self, etag: str) -> bool:
        # A token that is not a generation cannot match; generation 0 would mean "must not
        # exist", so never let a token turn into that.
        return etag.isdigit() and int(etag) > 0

    def _missing(self, key: str, action: str) -> DatarunError:
        return ObjectNotFound(self.url, key) if self._bucket_exists() else self._bucket_missing(key, action)

    def _translate(self, err: Exception, key: str, action: str) -> DatarunError:
        status = _status(err)
        if isinstance(err, auth_exc.GoogleAuthError) or status in (401, 403):
            return StoreError(
                f"store `{self.url}`: access denied while trying to {action} `{key}`; check the credentials "
                f"(now taken from {self.auth.source}) and that they may use bucket `{self.bucket_name}`; "
                f"datarun reads {CREDENTIAL_VARS}"
            )
        if status == 404:
            return self._missing(key, action)
        if isinstance(err, OSError) and not isinstance(err, requests.RequestException):
            return LocalIOError(f"cannot {action} `{key}` to store `{self.url}`: {err.strerror or err}")
        message = getattr(err, "message", None) or str(err)
        return StoreError(
            f"store `{self.url}`: cannot {action} `{key}`: HTTP {status or '?'} {redact(short(message))}; "
            "retry later, and check the bucket's status if it persists"
        )

    def _bucket_exists(self) -> bool:
        """Tell "no such object" from "no such bucket" (both are a bare 404); asked once."""
        if not self._bucket_seen:
            try:
                self._bucket_seen = bool(self._bucket.exists(retry=None, timeout=self.timeout))
            except Exception:
                return True  # cannot tell: assume the common case, a missing object
        return self._bucket_seen

    def _bucket_missing(self, key: str, action: str) -> StoreError:
        return StoreError(
            f"store `{self.url}`: cannot {action} `{key}`: bucket `{self.bucket_name}` does not exist at "
            f"{self._endpoint()}; create it with `gcloud storage buckets create gs://{self.bucket_name}` "
            f"(or `gsutil mb gs://{self.bucket_name}`)"
        )

    # -- one SDK call each ---------------------------------------------------------------

    def _blob(self, key: str, *, upload: bool = False) -> Any:
        blob = self._bucket.blob(self._name(key))
        if upload:
            # Only for uploads: on a download a chunk size means several requests, and the
            # chunked path does not report the generation it read.
            blob.chunk_size = CHUNK_SIZE
        return blob

    def _upload(self, key: str, payload: Payload, *, if_absent: bool = False, if_match: str = "") -> ObjectInfo:
        generation = 0 if if_absent else int(if_match) if if_match else None
        blob = self._blob(key, upload=True)
        size = payload_size(payload)
        kwargs: dict[str, Any] = {"retry": None, "timeout": self.timeout, "if_generation_match": generation}
        if isinstance(payload, Path):
            with payload.open("rb") as handle:
                blob.upload_from_file(handle, size=size, **kwargs)
        else:
            blob.upload_from_string(bytes(payload), **kwargs)
        return ObjectInfo(key, size, str(blob.generation))

    def _read_once(self, key: str) -> tuple[bytes, ObjectInfo]:
        blob = self._blob(key)
        data: bytes = blob.download_as_bytes(retry=None, timeout=self.timeout)
        return data, ObjectInfo(key, len(data), str(blob.generation))

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        # GCS ranges are inclusive at both ends.
        data: bytes = self._blob(key).download_as_bytes(
            start=start, end=start + length - 1, retry=None, timeout=self.timeout, checksum=None
        )
        return data

    def _stat(self, key: str) -> ObjectInfo | None:
        blob = self._bucket.get_blob(self._name(key), retry=None, timeout=self.timeout)
        return None if blob is None else ObjectInfo(key, int(blob.size or 0), str(blob.generation))

    def _delete_once(self, key: str) -> None:
        self._blob(key).delete(retry=None, timeout=self.timeout)

    def _list_page(self, prefix: str, start_after: str | None, token: str | None) -> Page:
        # start_offset is inclusive and server-side: it skips what precedes; the base class drops the equal key.
        offset = start_after if start_after is not None and start_after > prefix else None
        found = self._client.list_blobs(
            self._bucket,
            prefix=prefix or None,
            start_offset=offset,
            page_token=token,
            page_size=1000,
            fields="items(name,size,generation),nextPageToken",
            retry=None,
            timeout=self.timeout,
        )
        current = next(found.pages, None)
        items = [ObjectInfo(b.name, int(b.size or 0), str(b.generation)) for b in current or ()]
        return items, found.next_page_token

    def _list_folders_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        found = self._client.list_blobs(
            self._bucket,
            prefix=prefix or None,
            delimiter="/",
            page_token=token,
            page_size=1000,
            fields="prefixes,nextPageToken",
            retry=None,
            timeout=self.timeout,
        )
        current = next(found.pages, None)
        return sorted(getattr(current, "prefixes", ()) or ()), found.next_page_token

    def close(self) -> None:
        self._client.close()
