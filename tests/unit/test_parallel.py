"""The bounded-parallel helpers every transfer loop stands on: order, bounds, and clean exits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from datarun.progress import NO_PROGRESS, Callback
from datarun.transfer.parallel import batched, bounded_map, run_all


def test_bounded_map_keeps_input_order_whatever_finishes_first() -> None:
    def slow_for_small(n: int) -> int:
        time.sleep(0.002 * (10 - n))
        return n * n

    assert list(bounded_map(slow_for_small, range(10), workers=4)) == [n * n for n in range(10)]


def test_bounded_map_pulls_input_only_as_room_frees_up() -> None:
    pulled = 0
    handed_back = 0
    most_ahead = 0

    def items() -> Iterator[int]:
        nonlocal pulled, most_ahead
        for n in range(50):
            pulled += 1
            most_ahead = max(most_ahead, pulled - handed_back)
            yield n

    for _ in bounded_map(lambda n: n, items(), workers=2, ahead=3):
        handed_back += 1
    assert handed_back == 50
    assert most_ahead <= 3


def test_an_error_stops_submitting_and_leaves_no_thread_running() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def fail_on_three(n: int) -> int:
        with lock:
            started.append(n)
        if n == 3:
            raise ValueError("three")
        time.sleep(0.01)
        return n

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="three"):
        run_all(fail_on_three, range(1000), workers=2, ahead=4, name="test-pmap")
    assert max(started) < 3 + 4 + 2, "submission stopped within the window after the failure"
    assert not [t for t in threading.enumerate() if t.name.startswith("test-pmap") and t.name not in before]


def test_leaving_early_cancels_what_has_not_started() -> None:
    ran: list[int] = []

    def record(n: int) -> int:
        ran.append(n)
        return n

    results = bounded_map(record, range(1000), workers=1, ahead=2)
    with contextlib.closing(results):
        assert next(results) == 0
    assert len(ran) <= 3


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "max_items", "want"),
    [
        ([], 10, 0, []),
        ([3, 3, 3, 3], 10, 0, [[3, 3, 3], [3]]),
        ([20, 1, 1], 10, 0, [[20], [1, 1]]),  # too big for any run: a run of its own
        ([1, 1, 1, 1, 1], 100, 2, [[1, 1], [1, 1], [1]]),
        ([5, 5, 5], 10, 0, [[5, 5], [5]]),  # exactly full is still one run
    ],
)
def test_batched_cuts_runs_by_bytes_and_count(
    sizes: list[int], max_bytes: int, max_items: int, want: list[list[int]]
) -> None:
    assert list(batched(sizes, max_bytes, lambda n: n, max_items)) == want


def test_a_branched_callback_counts_toward_its_parent() -> None:
    class Counting(Callback):
        def __init__(self) -> None:
            self.done = 0
            self.size: int | None = None

        def set_size(self, size: int | None) -> None:
            self.size = size

        def relative_update(self, inc: int = 1) -> None:
            self.done += inc

    parent = Counting()
    parent.set_size(100)
    child = parent.branched("a", "b")
    child.set_size(7)
    child.relative_update(7)
    assert (parent.done, parent.size) == (7, 100)
    assert NO_PROGRESS.branched("a", "b") is NO_PROGRESS
