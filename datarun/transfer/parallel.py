"""Bounded parallelism: calls on a thread pool, a few at most in flight, results in order.

Every transfer loop has this shape: hand work to threads, but never more than a few items
ahead, so memory stays bounded whatever the input's size and a failure stops the submitting at
once. ``Window`` is that shape for a producer that pushes (the uploader seals packs deep inside
its walk); ``bounded_map`` for input that is an iterator; ``batched`` cuts small items into the
work units both hand out.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 4  # threads that move data, unless the caller (`--workers`) says otherwise


class Window(Generic[T, R]):
    """Calls of ``fn`` on ``pool``, at most ``limit`` of them not yet taken, taken oldest first."""

    def __init__(self, pool: Executor, fn: Callable[[T], R], limit: int) -> None:
        self._pool = pool
        self._fn = fn
        self._limit = max(1, limit)
        self._inflight: deque[tuple[Future[R], T]] = deque()

    def __len__(self) -> int:
        return len(self._inflight)

    def full(self) -> bool:
        """Whether a new call must wait until the oldest is taken."""
        return len(self._inflight) >= self._limit

    def submit(self, item: T) -> None:
        self._inflight.append((self._pool.submit(self._fn, item), item))

    def take(self) -> R:
        """The result of the oldest call, waiting for it; its error is raised here."""
        future, _ = self._inflight[0]
        result = future.result()
        self._inflight.popleft()
        return result

    def abandon(self) -> list[T]:
        """Cancel the calls that have not started; return the items of all calls not taken,
        so the caller can clean up after them (once the pool has stopped)."""
        items = []
        for future, item in self._inflight:
            future.cancel()
            items.append(item)
        self._inflight.clear()
        return items


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int = 0, name: str = "datarun"
) -> Generator[R, None, None]:
    """``fn`` over ``items`` on ``workers`` threads; results in the order of ``items``.

    At most ``ahead`` calls (default twice ``workers``) are submitted and not yet handed back, and
    ``items`` is pulled on the caller's thread only as room frees up. Leaving early (an error
    here or in the consumer, or ``close()``) cancels the calls not started and waits for the
    running ones, so no thread outlives the iteration: use it under ``contextlib.closing``.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        window: Window[T, R] = Window(pool, fn, ahead or 2 * workers)
        pending = iter(items)
        try:
            while True:
                while window.full():
                    yield window.take()
                # Pulled only once it fits: an item may be a unit of work that holds memory.
                try:
                    item = next(pending)
                except StopIteration:
                    break
                window.submit(item)
            while window:
                yield window.take()
        finally:
            window.abandon()


def run_all(
    fn: Callable[[T], object], items: Iterable[T], *, workers: int, ahead: int = 0, name: str = "datarun"
) -> None:
    """``bounded_map`` for calls whose results are not needed: returns once all are done."""
    with contextlib.closing(bounded_map(fn, items, workers=workers, ahead=ahead, name=name)) as results:
        for _ in results:
            pass


def batched(items: Iterable[T], max_bytes: int, size: Callable[[T], int], max_items: int = 0) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` holding at most ``max_bytes`` (as ``size`` counts them) and,
    if given, ``max_items`` each. An item bigger than ``max_bytes`` makes a run of its own; no run
    is empty. Lazy: a run is handed on once the next item does not fit, or at the end."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and (total + n > max_bytes or (max_items and len(batch) >= max_items)):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch
