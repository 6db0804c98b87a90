"""Faust's table recovery, with its stream partitions sought to their committed offsets *before* they resume.

faust-streaming 0.15 ends a recovery (``Recovery.on_recovery_completed``, and ``_resume_streams`` for an app
without tables) by resuming the stream partitions and only then seeking them to their committed offsets. Its
fetcher already runs at that point (it read the changelogs), so in between it can hand the agents a batch
fetched at the old position; the seek then
rewinds the read offset while that batch is still being delivered, the records fetched again after the
seek are dropped as already read, and a few messages in the middle are never delivered at all. Their
offsets are never acked, so the partition's committed offset stops there for good, and the events are lost
to everything downstream (upstream: faust-streaming/faust#596, open). Seen here as a worker restarted
after a ``kill -9`` whose learner never received 3–217 interactions produced after the restart
(``tests/integration/test_learner_restart.py``, about one run in two; docs/operations.md, "Faults").

The fix: seek first (aiokafka drops whatever it prefetched for a partition it seeks), then resume. Nothing can
be delivered for a stream partition between the two, because Faust keeps it paused until the resume. Both
methods are Faust's own steps in Faust's order apart from that swap (checked against 0.15.3).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.tables import TableManager
from faust.tables.recovery import Recovery


class SeekFirstRecovery(Recovery):
    """Faust's :class:`~faust.tables.recovery.Recovery` with both of its ends (tables recovered, or no tables)
    seeking the stream partitions before resuming them; otherwise the same steps in the same order."""

    async def _seek_then_resume(self, assignment: set) -> None:
        if assignment:
            self.log.info("Seek stream partitions to committed offsets, then resume them.")
            await self._wait(self.app.consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            self.app.consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})

    async def _start_flow(self) -> None:
        self.completed.set()
        self.log.info("Resuming flow...")
        self.app.flow_control.resume()
        self.app.consumer.resume_flow()
        await cast(Any, self.app)._fetcher.maybe_start()

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Active table recovery is completed (the path of an app with tables, such as the worker)."""
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                                       self.standbys_for_table[table]))
                     for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = self.app.consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again app id %s param %s", self.app.consumer_generation_id,
                             generation_id)
            return
        await self._seek_then_resume(assignment)
        await self._start_flow()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Resume after a rebalance when there are no tables to recover."""
        await self.app.on_rebalance_complete.send()
        assignment = self.app.consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if not assignment:
            self.log.info("Resuming streams with empty assignment")
        await self._seek_then_resume(assignment)
        await self._start_flow()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class SeekFirstTableManager(TableManager):
    """Faust's table manager with :class:`SeekFirstRecovery` (``TableManager=`` of the app)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
