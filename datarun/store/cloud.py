"""What the cloud backends share: keys under a prefix, one retry loop, and the primitives built
from a handful of SDK calls.

A subclass (``azure.py``, ``gcs.py``) says how to upload, read, stat, delete and list one page
with its SDK, and how to read that SDK's errors. This class turns those into the ObjectStore
contract the same way for every cloud:

- every call goes through ``retry_call`` (store/retry.py), then the backend's ``_translate``;
- a conditional write that is retried after a lost response may find its own first attempt:
  it reads the object back, and if the bytes are ours it has won, not lost the race;
- the cloud answers "precondition failed" whether an object changed or vanished, so a failed
  compare-and-swap asks which one it was;
- a zero-length range still says whether the key exists; a range past the end is empty;
- listings are paged by the SDK's continuation token, filtered to keys after ``start_after``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypedDict, TypeVar
from urllib.parse import urlparse

import requests

from datarun.errors import DatarunError, PreconditionFailed, UsageError
from datarun.store.base import ObjectInfo, ObjectStore, Payload, check_folder_prefix, validate_key
from datarun.store.retry import RetryPolicy, install_log_redaction, retry_call, same_payload

_T = TypeVar("_T")

Page = tuple[list[ObjectInfo], str | None]
"""One page of a listing (full object names in ``ObjectInfo.key``) and the token of the next."""


class Connection(TypedDict, total=False):
    """How every cloud backend talks to its service; keyword arguments of each constructor."""

    policy: RetryPolicy | None  # attempts and backoff; default: RetryPolicy.from_env()
    connect_timeout: float  # seconds to establish a connection (default 10)
    read_timeout: float  # seconds to wait for the next bytes of an answer (default 60)
    pool_size: int  # connections kept per host (default 64)


def pooled(session: requests.Session, pool_size: int, max_retries: Any) -> requests.Session:
    """``session`` with a connection pool of ``pool_size`` per host. requests' default keeps 10,
    fewer than the parallel block uploads and racing writers we run; ``max_retries`` keeps
    urllib3 from retrying on its own."""
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=max_retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class CloudStore(ObjectStore):
    scheme: ClassVar[str]  # "az", "gs"
    bucket_word: ClassVar[str]  # what the cloud calls a bucket, for messages: "container", "bucket"
    unsure_reads: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    """Errors of the read-back after a lost conditional write that mean "cannot tell whether the
    write was ours": the write then counts as lost. Anything else propagates (and is retried
    when transient)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        transient: Callable[[BaseException], str | None],
        *,
        policy: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        pool_size: int = 64,
    ) -> None:
        """``transient`` reads the SDK's errors for ``retry_call``: a few words when one is worth
        another attempt, else None. The rest is a ``Connection``."""
        self._transient = transient
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.url = f"{self.scheme}://{bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{bucket}"
        self.policy = policy or RetryPolicy.from_env()
        self._root = f"{self.prefix}/" if self.prefix else ""
        install_log_redaction()

    @classmethod
    def split_url(cls, url: str) -> tuple[str, str]:
        """``scheme://bucket/prefix`` -> (bucket, prefix), refusing anything else."""
        parsed = urlparse(url)
        if parsed.scheme != cls.scheme or not parsed.netloc or parsed.query or parsed.fragment:
            raise UsageError(f"store URL `{url}`: use {cls.scheme}://<{cls.bucket_word}>[/<prefix>]")
        return parsed.netloc, parsed.path

    # -- what a backend implements: one SDK call each -----------------------------------

    @abstractmethod
    def _upload(self, key: str, payload: Payload, *, if_absent: bool = False, if_match: str = "") -> ObjectInfo:
        """Write ``key`` (create-only with ``if_absent``; only over version ``if_match`` if given)."""

    @abstractmethod
    def _read_once(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole object and the version that was read."""

    @abstractmethod
    def _read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` (> 0) bytes at ``start``; may raise what ``_past_end`` recognises."""

    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo | None:
        """Size and version, or None if the object (not its bucket) is absent."""

    @abstractmethod
    def _delete_once(self, key: str) -> None:
        """Remove ``key``; may raise what ``_absent`` recognises."""

    @abstractmethod
    def _list_page(self, prefix: str, start_after: str | None, token: str | None) -> Page:
        """One page of objects whose full names start with ``prefix``; ``start_after`` (a full
        name) lets a backend skip ahead server-side, and is filtered here anyway."""

    @abstractmethod
    def _list_folders_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        """One page of a delimiter listing: full folder names (``prefix`` + name + ``/``), sorted."""

    # -- how a backend reads its SDK's errors -------------------------------------------

    @abstractmethod
    def _translate(self, err: Exception, key: str, action: str) -> DatarunError:
        """The user-facing error for an SDK error that was not retried or ran out of attempts."""

    @abstractmethod
    def _endpoint(self) -> str:
        """Where requests go and which setting chose it, for "is it reachable?" hints."""

    @abstractmethod
    def _lost_race(self, err: BaseException, *, creating: bool) -> bool:
        """Whether ``err`` says a conditional write's precondition failed."""

    @abstractmethod
    def _absent(self, err: BaseException) -> bool:
        """Whether ``err`` says the object is absent (and its bucket is not)."""

    @abstractmethod
    def _past_end(self, err: BaseException) -> bool:
        """Whether ``err`` says a range starts at or past the end of the object."""

    @abstractmethod
    def _missing(self, key: str, action: str) -> DatarunError:
        """The error for an absent object: not found, or the bucket itself is gone."""

    def _may_match(self, etag: str) -> bool:
        """Whether ``etag`` can be a version of this store at all (else: never matches)."""
        return True

    # -- plumbing ------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + validate_key(key)

    def _call(self, key: str, action: str, fn: Callable[[int], _T]) -> _T:
        try:
            return retry_call(
                fn,
                policy=self.policy,
                store=self.url,
                key=key,
                action=action,
                transient=self._transient,
                hint=f"check that {self._endpoint()} is reachable",
            )
        except DatarunError:
            raise
        except Exception as err:
            raise self._translate(err, key, action) from None

    def _landed(self, key: str, payload: Payload) -> ObjectInfo | None:
        """After a retried conditional write lost the race: was the winner our own first try?"""
        try:
            data, info = self._read_once(key)
        except self.unsure_reads:
            return None
        return info if same_payload(data, payload) else None

    def _conditional_upload(
        self, attempt: int, key: str, payload: Payload, *, if_absent: bool = False, if_match: str = ""
    ) -> ObjectInfo | None:
        """The conditional write, or None when its precondition failed and the object there is
        not what an earlier attempt of ours wrote (a retry after a lost response may find it)."""
        try:
            return self._upload(key, payload, if_absent=if_absent, if_match=if_match)
        except Exception as err:
            if not self._lost_race(err, creating=if_absent):
                raise
        return self._landed(key, payload) if attempt else None

    # -- primitives ----------------------------------------------------------------------

    def put(self, key: str, payload: Payload) -> ObjectInfo:
        self._name(key)
        return self._call(key, "write", lambda _: self._upload(key, payload))

    def put_if_absent(self, key: str, payload: Payload) -> ObjectInfo:
        self._name(key)

        def attempt(n: int) -> ObjectInfo:
            won = self._conditional_upload(n, key, payload, if_absent=True)
            if won is None:
                raise PreconditionFailed(self.url, key, "it already exists")
            return won

        return self._call(key, "create", attempt)

    def put_if_match(self, key: str, payload: Payload, etag: str) -> ObjectInfo:
        self._name(key)

        def attempt(n: int) -> ObjectInfo:
            won = self._conditional_upload(n, key, payload, if_match=etag) if self._may_match(etag) else None
            if won is not None:
                return won
            # The cloud answers 412 whether the object changed or vanished; the contract tells them apart.
            if self._stat(key) is None:
                raise self._missing(key, "update")
            raise PreconditionFailed(self.url, key, "it was changed by another writer")

        return self._call(key, "update", attempt)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        self._name(key)
        return self._call(key, "read", lambda _: self._read_once(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._name(key)
        if length <= 0:
            self.head(key)  # still says ObjectNotFound for a missing key
            return b""

        def attempt(_: int) -> bytes:
            try:
                return self._read_range(key, start, length)
            except Exception as err:
                if self._past_end(err):
                    return b""
                raise

        return self._call(key, "read", attempt)

    def head(self, key: str) -> ObjectInfo:
        self._name(key)

        def attempt(_: int) -> ObjectInfo:
            info = self._stat(key)
            if info is None:
                raise self._missing(key, "stat")
            return info

        return self._call(key, "stat", attempt)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        full = self._root + prefix
        after = self._root + start_after if start_after is not None else None
        token: str | None = None
        while True:

            def page(_: int, token: str | None = token) -> Page:
                return self._list_page(full, after, token)

            items, token = self._call(prefix or "/", "list keys under", page)
            for item in items:
                key = item.key[len(self._root) :]
                if start_after is None or key > start_after:
                    yield ObjectInfo(key, item.size, item.etag)
            if not token:
                return

    def list_folders(self, prefix: str) -> Iterator[str]:
        check_folder_prefix(prefix)
        full = self._root + prefix
        token: str | None = None
        while True:

            def page(_: int, token: str | None = token) -> tuple[list[str], str | None]:
                return self._list_folders_page(full, token)

            folders, token = self._call(prefix or "/", "list folders under", page)
            yield from (f[len(self._root) :] for f in folders)
            if not token:
                return

    def delete(self, key: str) -> None:
        self._name(key)

        def attempt(_: int) -> None:
            try:
                self._delete_once(key)
            except Exception as err:
                if not self._absent(err):
                    raise

        self._call(key, "delete", attempt)
