"""The shared admission table (app.capacity): one limit for all workers, a dead worker's share freed."""

from __future__ import annotations

import os

import pytest

from app.capacity import SharedCounts
from app.errors import RateLimited
from app.lifecycle import Lifecycle


def test_workers_share_one_limit_and_a_dead_workers_share_is_freed():
    table = SharedCounts(slots=4)
    table.set_workers(2)
    a, b = table.claim(101), table.claim(102)
    assert a is not None and b is not None and a != b
    assert table.claim(101) == a  # a worker that claims again keeps its slot
    # One worker may take more than its half while the server has room: 4 in all.
    assert [table.try_acquire(a, 4) for _ in range(3)] == [True, True, True]
    assert table.try_acquire(b, 4) is True
    assert table.try_acquire(b, 4) is False and table.try_acquire(a, 4) is False
    table.release(b)
    assert table.total() == 3 and table.try_acquire(b, 4) is True
    table.release_process(101)  # the master reaps worker 101: its three stop counting
    assert table.total() == 1
    assert table.claim(103) == a  # and its slot is free for the replacement
    assert table.claim(104) is not None and table.claim(105) is not None and table.claim(106) is None


def test_lifecycle_admits_up_to_workers_times_its_limit():
    table = SharedCounts(slots=4)
    table.set_workers(2)
    table.claim(os.getpid() + 1)  # the other worker
    lifecycle = Lifecycle(2, table)
    assert lifecycle.capacity == 4
    for _ in range(4):
        lifecycle.admit()
    assert table.total() == 4
    with pytest.raises(RateLimited, match="limit of 4"):
        lifecycle.admit()
