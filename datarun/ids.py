"""Time-sortable ids for bundles, in the KSUID shape datamon users already know.

A KSUID is 4 bytes of seconds since 2014-05-13 plus a 16-byte payload, base62-encoded to 27
characters. Our payload starts with 3 bytes of microseconds and ends with 13 random bytes, so
lexical order equals time order to the microsecond, not just the second: ``list`` returns
bundles oldest-first without reading them, even for several uploads in one second.
"""

from __future__ import annotations

import os
import re
import time

_EPOCH = 1_400_000_000
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LENGTH = 27
KSUID_RE = re.compile(r"^[0-9A-Za-z]{27}$")


def new_ksuid(now: float | None = None, tail: bytes | None = None) -> str:
    """A new id for the time ``now``; ``tail`` (13 bytes) replaces the random part, for ids that
    must come out the same when a writer retries (a DataRun's run record, an imported folder)."""
    stamp = now if now is not None else time.time()
    seconds = int(stamp) - _EPOCH
    micros = int((stamp - int(stamp)) * 1_000_000)
    if tail is not None and len(tail) != 13:
        raise ValueError("a KSUID tail is 13 bytes")
    raw = seconds.to_bytes(4, "big") + micros.to_bytes(3, "big") + (tail if tail is not None else os.urandom(13))
    number = int.from_bytes(raw, "big")
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(_LENGTH, "0")


def ksuid_time(ksuid: str) -> float:
    number = 0
    for char in ksuid:
        number = number * 62 + _ALPHABET.index(char)
    return float((number >> 128) + _EPOCH)


def is_ksuid(text: str) -> bool:
    return bool(KSUID_RE.match(text))
