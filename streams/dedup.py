"""The deduplication table: which ``event_id`` a worker has handled, remembered for a bounded window.

Each entry is ``[event ts, partition, offset, arrival]``: where the event was first read, and when (the
worker's wall clock). An entry older than the window is deleted, so memory and the changelog stop growing
with history. The guarantee (README, "Processing guarantee"): a message carrying an ``event_id`` first
accepted less than ``window_s`` ago is a duplicate; once the window has passed (and the next purge of its
partition ran, at most ``purge_every_s`` later), the same ``event_id`` is accepted again. The window is a
worker setting (``RECLOOP_WORKER_DEDUP_WINDOW_S``, a week by default: :class:`streams.settings.WorkerSettings`).

Plain functions and a class, tested without a broker (``tests/unit/test_dedup_window.py``). The ingest agent
calls :meth:`DedupWindow.purge` while it handles a message of the same partition, because a Faust table can
only be changed from inside a stream: the deletions become tombstones in that partition of the changelog,
which Kafka's compaction then removes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, MutableMapping
from typing import Any

from streams.ingest import SourcePosition

log = logging.getLogger(__name__)


def first_time_seen(seen: MutableMapping[str, Any], event_id: str, ts: float, position: SourcePosition, *,
                    now: float | None = None) -> bool:
    """Record ``event_id`` in ``seen`` with where and when it was first read; False when it is a duplicate.

    A duplicate is the same event id in *another* message (a replay, a producer's retry). The same message
    read again (same partition and offset: the worker crashed after marking it seen but before its offset
    was committed) is **not** one: its effects downstream (the forward to the learner) may have been lost
    with the crash, while the mark reached the table's changelog. It is handled again; downstream
    consumers that keep state deduplicate by event id or offset themselves (the learner, the monitor).

    >>> seen, at = {}, SourcePosition("t", 0, 7)
    >>> first_time_seen(seen, "e1", 1.0, at, now=5.0), first_time_seen(seen, "e1", 1.0, at)
    (True, True)
    >>> first_time_seen(seen, "e1", 1.0, SourcePosition("t", 0, 9))  # the same event in another message
    False
    >>> seen["e1"]
    [1.0, 0, 7, 5.0]
    """
    return _mark(seen, event_id, ts, position, time.time() if now is None else now)[0]


def _mark(seen: MutableMapping[str, Any], event_id: str, ts: float, position: SourcePosition,
          now: float) -> tuple[bool, bool]:
    """:func:`first_time_seen` with one lookup: (first time, whether an entry was written now)."""
    where = [position.partition, position.offset]
    first = seen.get(event_id)
    if first is None:
        seen[event_id] = [ts, *where, now]
        return True, True
    return isinstance(first, list) and first[1:3] == where, False  # a bare timestamp predates positions


#: How many recent event ids the in-memory deduplications keep (the learner's ``RECLOOP_LEARNER_DEDUP_WINDOW``
#: default, and each serving worker's count of explanation feedback).
RECENT_IDS = 100_000


def remember_once(recent: OrderedDict[str, None], event_id: str, limit: int) -> bool:
    """Whether ``event_id`` is new to ``recent``, the last ``limit`` ids seen (oldest forgotten first): the
    in-memory deduplication of the learner and of serving workers, bounded like the worker's table.

    >>> recent = OrderedDict()
    >>> [remember_once(recent, e, limit=2) for e in ["a", "b", "a", "c", "a"]]
    [True, True, False, True, True]
    """
    if event_id in recent:
        return False
    recent[event_id] = None
    while len(recent) > limit:
        recent.popitem(last=False)
    return True


def arrival(entry: Any, default: float) -> float:
    """When an entry was written; ``default`` for entries written before arrival times were kept."""
    return float(entry[3]) if isinstance(entry, list) and len(entry) > 3 else default


def partition_of(entry: Any) -> int | None:
    return int(entry[1]) if isinstance(entry, list) and len(entry) > 2 else None


class DedupWindow:
    """Forget a deduplication table's entries once they are older than ``window_s`` (0: never forget).

    Keeps, per partition, the table's keys in arrival order, so a purge only touches what expires. A partition
    seen for the first time (a worker start, a rebalance) is indexed by one scan of the table; entries written
    before arrival times were kept (``[ts, partition, offset]``) count as arriving at that scan. Entries written
    before positions were kept (a bare timestamp) name no partition, so no purge can delete them: their
    tombstone must go to the changelog partition they were written to.
    """

    def __init__(self, window_s: float, *, purge_every_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if window_s < 0 or purge_every_s <= 0:
            raise ValueError(f"need window_s >= 0 and purge_every_s > 0, got {window_s} and {purge_every_s}")
        self.window_s, self.purge_every_s, self.clock = window_s, purge_every_s, clock
        self._order: dict[int, deque[tuple[float, str]]] = {}
        self._next_purge: dict[int, float] = {}
        self.forgotten = 0

    def seen(self, table: MutableMapping[str, Any], event_id: str, ts: float, position: SourcePosition) -> bool:
        """:func:`first_time_seen`, keeping the arrival order of the partition (once it is indexed)."""
        now = self.clock()
        first, written = _mark(table, event_id, ts, position, now)
        order = self._order.get(position.partition)
        if written and order is not None:
            order.append((now, event_id))
        return first

    def purge(self, table: MutableMapping[str, Any], partition: int) -> int:
        """Delete ``partition``'s entries older than the window, if a purge is due; how many were deleted."""
        if not self.window_s:
            return 0
        now = self.clock()
        if now < self._next_purge.get(partition, 0.0):
            return 0
        self._next_purge[partition] = now + self.purge_every_s
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = self._index(table, partition, now)
        horizon, deleted = now - self.window_s, 0
        while order and order[0][0] < horizon:
            written, key = order.popleft()
            entry = table.get(key)
            if entry is not None and arrival(entry, written) == written and partition_of(entry) == partition:
                del table[key]
                deleted += 1
        if deleted:
            self.forgotten += deleted
            log.info("deduplication window: forgot %d event ids of partition %d older than %.0f s (%d left)",
                     deleted, partition, self.window_s, len(order))
        return deleted

    def forget_partition(self, partition: int) -> None:
        """The partition moved to another worker: drop its index (rebuilt if it comes back)."""
        self._order.pop(partition, None)
        self._next_purge.pop(partition, None)

    @staticmethod
    def _index(table: MutableMapping[str, Any], partition: int, now: float) -> deque[tuple[float, str]]:
        entries = [(arrival(entry, now), key) for key, entry in list(table.items()) if partition_of(entry) == partition]
        return deque(sorted(entries))
