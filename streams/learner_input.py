"""The learner's input: one consumer reads the internal learner topic a fetch at a time, inside the Faust app.

Why not a Faust agent: a Faust stream delivers one event at a time, and that machinery alone tops out near 3,800
events/s per process (BENCHMARKS.md, "Ingest options compared"); with the learner's input read so, the worker that
trains ingested ~2,000 events/s. This consumer keeps what the ``learner-train`` agent guaranteed:

- **one trainer**: the topic has one partition and the consumer is a member of the group ``<app id>-learner``;
  however many workers run, exactly one owns the partition and trains, so adapters form one chain of versions;
- **back-pressure without loss**: records go to the :class:`Inbox` a fetch at a time; while it is full the
  partition is *paused*. aiokafka drops the fetched records of a paused partition that it has not returned and
  fetches them again from its position (the offset after the last record returned) when it is resumed, so nothing
  is skipped. (Faust kept a position of its own, and a pause lost records: docs/learner.md, "Back-pressure".)
  The consumer still polls while paused, so the group never takes the partition away from a busy learner;
- **offsets after the checkpoint**: an offset is committed only for records a checkpoint on disk holds
  (:meth:`commit`, called by the trainer once a checkpoint settled them); a crash re-delivers the rest;
- **hand-over**: when the partition is revoked the inbox is emptied (the next owner reads those records from the
  committed offset); the trainer reloads the checkpoint when the offsets it is given do not continue its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError

from streams.app import group_consumer
from streams.topics import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from streams.inbox import Inbox
    from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Records one poll hands to the inbox at most (the inbox's high water bounds how many wait in all).
MAX_FETCH_RECORDS = 2000


def learner_group_id(app_id: str) -> str:
    """
    >>> learner_group_id("worker-1")
    'worker-1-learner'
    """
    return f"{app_id}-learner"


class LearnerInput(ConsumerRebalanceListener):
    """Reads the learner topic into ``inbox`` and commits what the trainer says a checkpoint holds."""

    def __init__(self, kafka: KafkaSettings, topic: str, inbox: Inbox, *, group_id: str,
                 group_instance_id: str | None = None, max_records: int = MAX_FETCH_RECORDS) -> None:
        self.kafka, self.topic, self.inbox = kafka, topic, inbox
        self.group_id, self.group_instance_id, self.max_records = group_id, group_instance_id, max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._committed = -1  # the highest offset committed (as the offset of the next record to read)
        self._started = asyncio.Event()
        self._stopping = False
        self.owner = False  # this worker holds the partition: it trains

    async def run(self) -> None:
        """Read until :meth:`stop`."""
        self._consumer = self._new_consumer()
        self._consumer.subscribe([self.topic], listener=self)
        await self._consumer.start()
        self._started.set()
        try:
            while not self._stopping:
                await self.poll()
        except ConsumerStoppedError:
            pass

    async def poll(self) -> None:
        """One fetch into the inbox, or, while the inbox is full, a poll of the paused partition."""
        consumer = self._consumer
        if self.inbox.paused:
            consumer.pause(*consumer.assignment())
            await self.inbox.wait_for_room(timeout=1.0)
            await consumer.getmany(timeout_ms=0)  # a poll: the group sees this member alive
            return
        if paused := consumer.paused():
            consumer.resume(*paused)  # fetched again from the position: the records it dropped come again
        batches = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
        for messages in batches.values():
            self.inbox.extend(messages)

    def _new_consumer(self) -> AIOKafkaConsumer:
        return group_consumer(self.kafka, self.group_id, self.group_instance_id, fetch_max_bytes=MAX_MESSAGE_BYTES)

    async def commit(self, records: Sequence[Any]) -> None:
        """Commit past the last of ``records`` (a checkpoint holds them); refused quietly once the partition moved."""
        if not records or self._consumer is None:
            return
        last = max(record.offset for record in records)
        if last + 1 <= self._committed:
            return
        try:
            await self._consumer.commit({TopicPartition(self.topic, 0): last + 1})
            self._committed = last + 1
        except (CommitFailedError, IllegalStateError) as exc:  # not ours any more: the next owner re-reads them
            log.warning("learner input commit refused by the group (%s); the next owner reads those records again",
                        exc)

    async def stop(self) -> None:
        """Leave the group (what a checkpoint holds is committed already; the rest is read again by the next owner)."""
        self._stopping = True
        if self._consumer is not None and self._started.is_set():
            await self._consumer.stop()

    # -- the group ------------------------------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            dropped = self.inbox.clear()
            log.info("learner input revoked: %d records waiting in the inbox are left to the next owner", dropped)
        self.owner = False

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner = bool(assigned)
        for tp in assigned:
            committed = await self._consumer.committed(tp)
            self._committed = committed if committed is not None else -1
        log.info("learner input %s", f"assigned (committed offset {self._committed})" if assigned
                 else "not assigned: another worker of the group trains")
