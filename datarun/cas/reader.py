"""Reading chunks back out of packs: the one path from stored frames to verified bytes.

Download, verify, streaming and the mount all read chunks through here, so they agree on what
a failure means. A pack that is not in the store is an integrity error (a bundle names bytes
that are gone), never something to try again: the store's own retry loop (``store/retry.py``)
already covers transient failures, and a second loop here would multiply its attempts.
"""

from __future__ import annotations

from collections.abc import Sequence

from datarun.cas.packs import decode_chunk
from datarun.errors import IntegrityError, NotFoundError
from datarun.layout import pack_key
from datarun.model import ChunkRef
from datarun.store import ObjectStore

COALESCE_GAP = 1 << 20  # read through gaps this small rather than issue another request


def read_chunk(store: ObjectStore, ref: ChunkRef, owner: str = "") -> bytes:
    """The verified bytes of one chunk: one ranged read of its frame."""
    return read_chunks(store, [ref], [owner] if owner else None)[0]


def read_chunks(store: ObjectStore, refs: Sequence[ChunkRef], owners: Sequence[str] | None = None) -> list[bytes]:
    """The verified bytes of ``refs``, in their order, merging nearby frames of a pack into one
    ranged read.

    ``owners`` names the file each ref belongs to, so an integrity error says which file is hit.
    """
    order = sorted(range(len(refs)), key=lambda i: (refs[i].pack, refs[i].offset))
    out: list[bytes] = [b""] * len(refs)
    i = 0
    while i < len(order):
        first = refs[order[i]]
        start, end = first.offset, first.offset + first.stored_size
        j = i + 1
        while j < len(order):
            nxt = refs[order[j]]
            if nxt.pack != first.pack or nxt.offset - end > COALESCE_GAP:
                break
            end = max(end, nxt.offset + nxt.stored_size)
            j += 1
        try:
            span = store.get_range(pack_key(first.pack), start, end - start)
        except NotFoundError:
            who = f"`{owners[order[i]]}`: " if owners else ""
            raise IntegrityError(f"{who}pack {first.pack[:16]} is missing from the store") from None
        view = memoryview(span)
        for k in order[i:j]:
            ref = refs[k]
            lo = ref.offset - start
            # A span of one whole frame is handed over as it is: no copy for the common single read.
            frame = span if lo == 0 and len(span) == ref.stored_size else bytes(view[lo : lo + ref.stored_size])
            try:
                out[k] = decode_chunk(ref, frame)
            except IntegrityError as err:
                raise IntegrityError(f"`{owners[k]}`: {err}" if owners else str(err)) from None
        i = j
    return out
