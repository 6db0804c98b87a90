"""The deduplication window: ids are duplicates inside it, forgotten (and accepted again) after it, per partition.

A plain dict stands in for the Faust table (the worker's table is a mapping with the same get/set/del); the
broker-backed behaviour is in ``tests/integration/test_ingest_worker.py``.
"""

from __future__ import annotations

import pytest

from streams.dedup import DedupWindow, first_time_seen
from streams.ingest import SourcePosition


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def at(partition: int, offset: int) -> SourcePosition:
    return SourcePosition("interactions", partition, offset)


def test_an_id_is_a_duplicate_inside_the_window_and_new_after_it():
    clock, table = Clock(), {}
    window = DedupWindow(60.0, purge_every_s=10.0, clock=clock)
    assert window.purge(table, 0) == 0  # indexes partition 0 (empty)
    assert window.seen(table, "e1", 1.0, at(0, 0))
    clock.now += 59
    assert window.purge(table, 0) == 0
    assert not window.seen(table, "e1", 1.0, at(0, 5))  # a replay inside the window
    clock.now += 2  # 61 s after it was first accepted, but the last purge was 2 s ago
    assert window.purge(table, 0) == 0 and "e1" in table
    clock.now += 8  # the next purge is due
    assert window.purge(table, 0) == 1 and "e1" not in table
    assert window.seen(table, "e1", 1.0, at(0, 9))  # after the window: accepted again
    assert window.forgotten == 1


def test_a_purge_deletes_only_its_own_partition_and_only_when_due():
    clock, table = Clock(), {}
    window = DedupWindow(30.0, purge_every_s=10.0, clock=clock)
    for i in range(3):
        window.seen(table, f"p0-{i}", 0.0, at(0, i))
        window.seen(table, f"p1-{i}", 0.0, at(1, i))
    clock.now += 31
    assert window.purge(table, 0) == 3  # first purge of partition 0: indexed by a scan of the table
    assert sorted(table) == ["p1-0", "p1-1", "p1-2"]  # a tombstone must go to the key's own changelog partition
    assert window.seen(table, "p0-new", 0.0, at(0, 3))
    assert window.seen(table, "p0-new", 0.0, at(0, 3))  # the same message redelivered: handled again, indexed once
    clock.now += 4
    assert window.purge(table, 0) == 0  # not due: 4 s since the last purge
    clock.now += 27
    assert window.purge(table, 0) == 1 and "p0-new" not in table
    assert window.purge(table, 1) == 3 and not table


def test_entries_written_before_the_window_existed():
    clock = Clock()
    table = {"old": [5.0, 0, 7], "older": 5.0}  # [ts, partition, offset] and a bare timestamp
    window = DedupWindow(30.0, purge_every_s=1.0, clock=clock)
    assert window.purge(table, 0) == 0  # indexed: "old" counts as arriving now
    clock.now += 31
    assert window.purge(table, 0) == 1
    assert table == {"older": 5.0}  # names no partition: no purge can place its tombstone, so it stays


def test_a_window_of_zero_remembers_forever():
    clock, table = Clock(), {}
    window = DedupWindow(0.0, clock=clock)
    window.seen(table, "e1", 0.0, at(0, 0))
    clock.now += 10 ** 9
    assert window.purge(table, 0) == 0 and "e1" in table
    assert not first_time_seen(table, "e1", 0.0, at(0, 1))


def test_a_revoked_partition_is_indexed_again_when_it_returns():
    clock, table = Clock(), {}
    window = DedupWindow(30.0, purge_every_s=1.0, clock=clock)
    window.purge(table, 0)
    window.forget_partition(0)
    table["elsewhere"] = [0.0, 0, 3, clock.now]  # written by the worker that held partition 0 meanwhile
    clock.now += 31
    assert window.purge(table, 0) == 1 and not table


@pytest.mark.parametrize("window_s, every_s", [(-1.0, 1.0), (1.0, 0.0)])
def test_bad_settings_are_refused(window_s, every_s):
    with pytest.raises(ValueError):
        DedupWindow(window_s, purge_every_s=every_s)
