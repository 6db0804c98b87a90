"""Where the learner's input waits: the inbox it takes micro-batches from, and the ledger of what is not yet settled."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any


class AckLedger:
    """Records held back until the learner step that consumed them is settled (in a checkpoint on disk).

    >>> ledger = AckLedger()
    >>> ledger.hold(1, ["a", "b"]); ledger.hold(2, ["c"])
    >>> ledger.release(settled_through=1), len(ledger)
    (['a', 'b'], 1)
    """

    def __init__(self) -> None:
        self._held: deque[tuple[int, Sequence[Any]]] = deque()

    def hold(self, step: int, events: Sequence[Any]) -> None:
        self._held.append((step, events))

    def release(self, settled_through: int) -> list[Any]:
        released: list[Any] = []
        while self._held and self._held[0][0] <= settled_through:
            released.extend(self._held.popleft()[1])
        return released

    def clear(self) -> None:
        """Forget what is held (the learner's state went back to a checkpoint: those records come again)."""
        self._held.clear()

    def __len__(self) -> int:
        return sum(len(events) for _, events in self._held)


class Inbox:
    """Records waiting for the learner, taken in micro-batches of up to ``n`` within ``within`` seconds.

    The reader (:class:`streams.learner_input.LearnerInput`) adds what each fetch brought; once ``high_water``
    records wait, the inbox is :attr:`paused` and the reader stops fetching until :meth:`take` has brought them
    down to ``low_water``. Training a batch never stops the reader before that: a step's records are taken out
    first, so a slow step only lets the inbox fill.

    >>> async def demo():
    ...     inbox = Inbox(high_water=3, low_water=1)
    ...     inbox.extend("abc")
    ...     paused = inbox.paused
    ...     first = await inbox.take(2, within=0.01)  # down to low water: room again
    ...     return paused, first, inbox.paused, await inbox.take(3, within=0.01)
    >>> asyncio.run(demo())
    (True, ['a', 'b'], False, ['c'])
    """

    def __init__(self, *, high_water: int, low_water: int) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water} and {high_water}")
        self.high_water, self.low_water = high_water, low_water
        self._events: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.times_paused = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def paused(self) -> bool:
        """True from ``high_water`` waiting records until :meth:`take` has brought them down to ``low_water``."""
        return not self._room.is_set()

    def extend(self, events: Iterable[Any]) -> None:
        """Add what a fetch brought (all of it: the reader checks :attr:`paused` before it fetches again)."""
        self._events.extend(events)
        if self._events:
            self._arrived.set()
        if len(self._events) >= self.high_water and not self.paused:
            self._room.clear()
            self.times_paused += 1

    async def wait_for_room(self, timeout: float) -> bool:
        """Wait until the inbox is no longer paused, at most ``timeout`` seconds; True if it has room."""
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def clear(self) -> int:
        """Drop every waiting record (the partition went to another worker); how many were dropped."""
        dropped = len(self._events)
        self._events.clear()
        self._room.set()
        return dropped

    async def take(self, n: int, within: float) -> list[Any]:
        """Wait for a first record, then up to ``within`` seconds for ``n``; never returns an empty batch."""
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self._events) < n and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch = [self._events.popleft() for _ in range(min(n, len(self._events)))]
        if self.paused and len(self._events) <= self.low_water:
            self._room.set()
        return batch
