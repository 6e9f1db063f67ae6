"""Retries for cloud stores: bounded attempts, exponential backoff with full jitter.

Only transient failures are retried: connection refused/reset, timeouts, and HTTP 408/429/5xx.
Anything else (4xx: not found, precondition failed, forbidden) is an answer, not an accident,
and goes straight to the caller. The SDKs' own retry loops are switched off by the backends so
that this is the only loop: an unreachable endpoint then fails in seconds with one clear line
instead of after minutes of silent SDK retries, and "after N attempts" in the message is true.

``DATARUN_STORE_RETRIES`` is the number of attempts per operation (default 5, at least 1);
``DATARUN_STORE_RETRY_SECONDS`` bounds the time from the first attempt after which no new
attempt is started (default 60).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from datarun.errors import DatarunError, StoreError, UsageError
from datarun.store.base import Payload

_T = TypeVar("_T")

ENV_ATTEMPTS = "DATARUN_STORE_RETRIES"
ENV_SECONDS = "DATARUN_STORE_RETRY_SECONDS"

# HTTP statuses that say "try again": timeout, throttling, and every server-side failure.
TRANSIENT_STATUS = frozenset({408, 429})


def is_transient_status(status: int | None) -> bool:
    return status is not None and (status in TRANSIENT_STATUS or 500 <= status <= 599)


DEFAULT_ATTEMPTS = 5
DEFAULT_DEADLINE = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = 0.2  # the first retry waits up to this long; each later one doubles it
    max_delay: float = 5.0
    deadline: float = DEFAULT_DEADLINE  # no new attempt starts this long after the first one

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        env = os.environ if env is None else env
        attempts = _env_number(env, ENV_ATTEMPTS, DEFAULT_ATTEMPTS, int)
        deadline = _env_number(env, ENV_SECONDS, DEFAULT_DEADLINE, float)
        return cls(attempts=max(1, int(attempts)), deadline=max(0.0, float(deadline)))


def _env_number(env: Mapping[str, str], name: str, default: float, kind: Callable[[str], float]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise UsageError(f"{name}=`{raw}` is not a number; unset it or give e.g. {name}={default:g}") from None


def retry_call(
    fn: Callable[[int], _T],
    *,
    policy: RetryPolicy,
    store: str,
    key: str,
    action: str,
    transient: Callable[[BaseException], str | None],
    hint: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """Call ``fn(attempt)`` until it returns, raises a non-transient error, or the policy runs out.

    ``transient(err)`` returns a short description ("connection refused") when ``err`` is worth
    another attempt and None otherwise. ``fn`` gets the 0-based attempt number so conditional
    writes can tell a first try from a retry whose earlier request may already have landed.
    """
    started = clock()
    last = "unknown error"
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except DatarunError:
            raise  # already translated by the backend (not found, precondition, ...)
        except Exception as err:
            why = transient(err)
            if why is None:
                raise
            last = why
        attempt += 1
        if attempt >= policy.attempts:
            break
        # Full jitter: a uniform wait in [0, cap) spreads out clients that failed together.
        delay = random.random() * min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto
        if clock() - started + delay > policy.deadline:
            break
        sleep(delay)
    plural = "attempt" if attempt == 1 else "attempts"
    raise StoreError(f"store `{store}`: cannot {action} `{key}` after {attempt} {plural}: {last}; {hint}")


# -- describing network failures -----------------------------------------------------------

_NAMED = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset by the server"),
    (ConnectionAbortedError, "connection aborted"),
    (BrokenPipeError, "connection closed while sending"),
    (socket.gaierror, "cannot resolve the endpoint's host name"),
    (TimeoutError, "timed out"),
)
# Matched by class name so this module needs neither requests nor urllib3 nor an SDK.
_NAMED_BY_CLASS = {
    "ConnectTimeout": "timed out connecting",
    "ConnectTimeoutError": "timed out connecting",
    "ReadTimeout": "timed out waiting for the server",
    "ReadTimeoutError": "timed out waiting for the server",
    "ServiceRequestTimeoutError": "timed out connecting",
    "ServiceResponseTimeoutError": "timed out waiting for the server",
    "RemoteDisconnected": "connection closed by the server",
    "IncompleteRead": "connection closed mid-response",
    "IncompleteReadError": "connection closed mid-response",
    "ChunkedEncodingError": "connection closed mid-response",
    "ProtocolError": "connection closed by the server",
}


def _chain(err: BaseException) -> Iterable[BaseException]:
    """``err`` and everything it wraps: causes, contexts, and the ``reason``/``inner_exception``
    attributes and exception arguments that requests, urllib3 and azure-core use."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested: list[object] = [cur.__cause__, cur.__context__]
        nested += [getattr(cur, name, None) for name in ("reason", "inner_exception", "original_error")]
        nested += list(cur.args)
        todo += [n for n in nested if isinstance(n, BaseException)]


def describe_network_error(err: BaseException) -> str | None:
    """A few words for a connection-level failure anywhere in ``err``'s chain, or None."""
    chain = list(_chain(err))
    for cls, words in _NAMED:
        if any(isinstance(e, cls) for e in chain):
            return words
    for e in chain:
        named = _NAMED_BY_CLASS.get(type(e).__name__)
        if named is not None:
            return named
    return None


# -- keeping secrets out of messages ---------------------------------------------------------

# A SAS token's only secret part is its signature; account keys and auth headers are secret whole.
_QUERY_SECRET = re.compile(r"(?i)\b(sig|signature|access_token|key)=[^&\s'\"]+")
_FIELD_SECRET = re.compile(r"(?i)\b(accountkey|sharedaccesssignature)(\s*[=:]\s*)[^;\s'\"]+")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization['\"]?)(\s*[=:]\s*['\"]?)[^'\"\n]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret, SAS query parameter and key-like field masked."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _QUERY_SECRET.sub(r"\1=***", text)
    text = _FIELD_SECRET.sub(r"\1\2***", text)
    return _AUTH_HEADER.sub(r"\1\2***", text)


class _RedactFilter(logging.Filter):
    """Masks SAS signatures in urllib3's debug lines, which print each request's full URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


_LOG_FILTER = _RedactFilter()


def install_log_redaction() -> None:
    """Idempotent: attach the filter to the loggers that write request URLs."""
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


def short(text: str, limit: int = 200) -> str:
    """The first line of an SDK message, cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- conditional writes whose answer was lost ------------------------------------------------


def same_payload(stored: bytes, payload: Payload) -> bool:
    """Whether ``stored`` is exactly ``payload``: decides if a conditional write that was retried
    after a lost response had in fact landed on the first try (and so we are the winner)."""
    if isinstance(payload, Path):
        try:
            if payload.stat().st_size != len(stored):
                return False
            offset = 0
            with payload.open("rb") as handle:
                while block := handle.read(4 << 20):
                    if stored[offset : offset + len(block)] != block:
                        return False
                    offset += len(block)
            return offset == len(stored)
        except OSError:
            return False
    return bytes(payload) == stored
