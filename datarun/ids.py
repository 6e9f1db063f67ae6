"""Time-sortable ids for bundles, in the KSUID shape datamon users already know.

A KSUID is 4 bytes of seconds since 2014-05-13 plus 16 random bytes, base62-encoded to 27
characters. Lexical order equals time order (to the second), which makes ``list`` with
``start_after`` return bundles oldest-first without reading them.
"""

from __future__ import annotations

import re
import secrets
import time

_EPOCH = 1_400_000_000
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LENGTH = 27
KSUID_RE = re.compile(r"^[0-9A-Za-z]{27}$")


def new_ksuid(now: float | None = None) -> str:
    seconds = int(now if now is not None else time.time()) - _EPOCH
    raw = seconds.to_bytes(4, "big") + secrets.token_bytes(16)
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
