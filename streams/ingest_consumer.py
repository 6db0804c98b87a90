"""The worker's ingest: one consumer reads the source topics a batch at a time, inside the Faust app.

Why not Faust agents: a Faust stream delivers one event at a time through its conductor, channels and acks, and
that machinery alone tops out near 3,800 events/s per process on this machine, whatever the agent does
(BENCHMARKS.md, "Ingest options compared"). This loop keeps every guarantee the agents gave and pays the
per-event cost of recloop's own logic only:

- **validation and the dead-letter topic**: each message is parsed by :func:`streams.ingest.validate`; an
  invalid one goes to the DLQ with its topic, partition and offset;
- **deduplication**: ``interactions`` and ``explanation-feedback`` are deduplicated on ``event_id`` per
  partition (:mod:`streams.dedup`, :class:`streams.seen_table.SeenTable`); the changes go to a compacted
  changelog topic, read back by the worker that owns the partition next (restart, rebalance) before it handles
  a message of it;
- **at-least-once, offsets after effects**: a batch's offsets are committed only after its changelog, dead-letter
  and downstream writes (the learner's topic, sent as record batches from the handlers' outbox; drift alarms)
  were acknowledged by the broker. A crash before the commit re-delivers the batch; its event ids are then in
  the changelog, so nothing counts twice;
- **partitions shared by workers**: the consumer is a member of the group ``<app id>-ingest``; a revoked
  partition's batch is finished and committed before the partition moves (the rebalance waits for it).

The Faust app still runs everything else (impressions, the learner, timers, the web pages); the loop is one of its
tasks and stops, committed, before the app flushes its producer on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError

from streams import topics
from streams.app import group_consumer
from streams.dedup import DedupWindow
from streams.ingest import IngestStats, SourcePosition, validate
from streams.record_batches import send_in_batches
from streams.records import DeadLetter, ExplanationFeedback, Interaction, Item, encode
from streams.seen_table import SEEN_TABLES, SeenTable, changelog_record, changelog_topic, read_changelog

if TYPE_CHECKING:
    from streams.agents import Downstream, Handler, WorkerMetrics
    from streams.app import RecloopApp

log = logging.getLogger(__name__)

#: Messages one poll hands to a batch: large enough that per-batch costs (the acknowledgements, the commit) vanish
#: per event, small enough that a batch takes a fraction of a second.
MAX_BATCH_RECORDS = 2000
#: The size of one changelog record batch (a changelog record is ~60 bytes).
CHANGELOG_BATCH_BYTES = 256 * 1024

@dataclass
class Source:
    """A source topic: what its messages must be, who receives the accepted ones, and its deduplication."""

    topic: str
    cls: type
    handlers: list[Handler]
    changelog: str | None = None  # None: not deduplicated (the catalogue, an upsert stream keyed by item id)
    window: DedupWindow | None = None
    tables: dict[int, SeenTable] = field(default_factory=dict)


def ingest_group_id(app_id: str) -> str:
    """
    >>> ingest_group_id("worker-1")
    'worker-1-ingest'
    """
    return f"{app_id}-ingest"


class IngestConsumer(ConsumerRebalanceListener):
    """The ingest loop of one worker (see the module's docstring)."""

    def __init__(self, r: RecloopApp, stats: IngestStats, metrics: WorkerMetrics, downstream: Downstream, *,
                 group_instance_id: str | None = None, max_records: int = MAX_BATCH_RECORDS) -> None:
        self.r, self.stats, self.metrics = r, stats, metrics
        self.group_instance_id, self.max_records = group_instance_id, max_records
        app_id, worker = r.app.conf.id, r.worker

        def window() -> DedupWindow:
            return DedupWindow(worker.dedup_window_s, purge_every_s=worker.dedup_purge_every_s)

        spec = {topics.INTERACTIONS.name: (Interaction, downstream.interaction),
                topics.EXPLANATION_FEEDBACK.name: (ExplanationFeedback, downstream.feedback),
                topics.CATALOG.name: (Item, downstream.item)}
        self.sources: dict[str, Source] = {}
        for name, (cls, handlers) in spec.items():
            table = SEEN_TABLES.get(name)
            self.sources[r.kafka.topic(name)] = Source(
                r.kafka.topic(name), cls, handlers, changelog_topic(app_id, table) if table else None,
                window() if table else None)
        self.catalogue = r.kafka.topic(topics.CATALOG.name)
        self.outbox = downstream.outbox
        self._lock = asyncio.Lock()
        self._pending: list[Awaitable[Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None  # the changelog writes: record batches, acks from all replicas
        self._stopping = False
        self.assigned = False  # the group gave this worker its partitions (possibly none) and their tables are read
        self.rebalancing = False

    @property
    def ready(self) -> bool:
        return self.assigned and not self.rebalancing and not self._stopping

    # -- the loop -------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`; an error crashes the worker (offsets of the failed batch uncommitted)."""
        try:
            await self._declare_changelogs()
            self._producer = AIOKafkaProducer(**self.r.kafka.aiokafka_options(), acks="all",
                                              client_id=f"{self.r.app.conf.id}-ingest",
                                              max_batch_size=CHANGELOG_BATCH_BYTES, linger_ms=5)
            await self._producer.start()
            self._consumer = self._new_consumer()
            self._consumer.subscribe(list(self.sources), listener=self)
            await self._consumer.start()
            while not self._stopping:
                try:
                    batches = await self._poll()
                except ConsumerStoppedError:
                    break
                async with self._lock:
                    if self._stopping:
                        break
                    await self._purge()
                    for tp, messages in sorted(batches.items(), key=lambda b: b[0].topic != self.catalogue):
                        await self._handle(tp, messages)
                    if batches:
                        await self._commit()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything else is a bug or a broker we cannot write to: crash
            log.exception("ingest failed; the worker stops without committing the batch")
            await self.r.app.crash(exc)

    async def _poll(self) -> dict[TopicPartition, list]:
        """The next batch: the catalogue's fetched records first, on their own, then the events.

        Items before the events that name them: a replay produces the catalogue and the purchases together, and
        one fetch brings both; handled in partition order, a batch of purchases could reach the learner before
        their items (unknown items teach it nothing)."""
        catalogue = [tp for tp in self._consumer.assignment() if tp.topic == self.catalogue]
        if catalogue and (items := await self._consumer.getmany(*catalogue, timeout_ms=0,
                                                                 max_records=self.max_records)):
            return items
        return await self._consumer.getmany(timeout_ms=500, max_records=self.max_records)

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, leave the group."""
        if self._stopping:
            return
        async with self._lock:
            self._stopping = True
        if self._consumer is not None:
            await self._consumer.stop()  # calls on_partitions_revoked (nothing left to commit by then)
        if self._producer is not None:
            await self._producer.stop()

    async def _handle(self, tp: TopicPartition, messages: list) -> None:
        source = self.sources[tp.topic]
        table = await self._table(source, tp.partition) if source.changelog else None
        stats, metrics, name, dlq = self.stats, self.metrics, tp.topic, self.r.dlq
        kind = source.cls.__name__.lower()
        for message in messages:
            position = SourcePosition(name, message.partition, message.offset)
            result = validate(source.cls, message.value, key=message.key, source=position)
            if isinstance(result, DeadLetter):
                await dlq.send(key=name.encode(), value=encode(result))
                stats.dead_lettered(name, result.error)
                metrics.dead_lettered.labels(name).inc()
                log.debug("dead-lettered %s[%d]@%d: %s", name, message.partition, message.offset, result.error)
                continue
            if table is not None and not source.window.seen(table, result.event_id, result.ts, position):
                stats.duplicate(name)
                metrics.duplicates.labels(name).inc()
                continue
            stats.accepted(name, getattr(result, "type", kind))
            metrics.accepted.labels(name).inc()
            for handler in source.handlers:
                await handler(result, position)
        if table is not None:
            await self._send_changes(source, table)

    async def _purge(self) -> None:
        """Forget the entries older than the deduplication window (each partition at most every purge_every_s)."""
        for source in self.sources.values():
            if source.changelog is None:
                continue
            for partition, table in source.tables.items():
                if forgotten := source.window.purge(table, partition):
                    self.stats.forgotten(source.topic, forgotten)
                    self.metrics.forgotten.labels(source.topic).inc(forgotten)
                    await self._send_changes(source, table)

    async def _send_changes(self, source: Source, table: SeenTable) -> None:
        """The table's changes as record batches for its changelog partition (one future per batch, not per record)."""
        self._pending += await send_in_batches(self._producer, source.changelog, table.partition,
                                               (changelog_record(key, entry) for key, entry in table.take_changes()))

    async def _commit(self) -> None:
        """Wait until the broker holds every write of the batch, then move the offsets past it."""
        for (topic, partition), records in self.outbox.take().items():  # the handlers' writes (the learner's input)
            self._pending += await send_in_batches(self._producer, topic, partition, records)
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)  # changelog and outbox records (a failed write raises: no commit)
        await self.r.app.producer.flush()  # dead letters and the handlers' Faust writes (drift alarms)
        try:
            await self._consumer.commit()
        except (CommitFailedError, IllegalStateError) as exc:  # the group rebalanced: the next owner re-reads it
            log.warning("ingest commit refused by the group (%s); the batch will be delivered again", exc)

    # -- partitions and their tables -----------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called by the consumer before its partitions move: waits for the batch in hand (committed by then)."""
        self.rebalancing = True
        async with self._lock:
            for tp in revoked:
                source = self.sources.get(tp.topic)
                if source is not None and source.changelog is not None:
                    source.tables.pop(tp.partition, None)
                    source.window.forget_partition(tp.partition)
        log.info("ingest partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Read the assigned partitions' deduplication tables from their changelogs before their first message."""
        for source in self.sources.values():
            if source.changelog is not None:
                await self._restore(source, [tp.partition for tp in assigned
                                             if tp.topic == source.topic and tp.partition not in source.tables])
        self.assigned, self.rebalancing = True, False
        log.info("ingest partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))

    async def _table(self, source: Source, partition: int) -> SeenTable:
        if partition not in source.tables:  # a batch of a partition the assignment callback did not see
            await self._restore(source, [partition])
        return source.tables[partition]

    async def _restore(self, source: Source, partitions: list[int]) -> None:
        """Read ``partitions``' deduplication tables back from ``source``'s changelog."""
        for partition, entries in (await read_changelog(self.r.kafka, source.changelog, partitions)).items():
            source.tables[partition] = SeenTable(partition, entries)

    # -- set-up ------------------------------------------------------------------------------------------------

    async def _declare_changelogs(self) -> None:
        partitions = topics.partitions_for(topics.INTERACTIONS, self.r.kafka)
        for source in self.sources.values():
            if source.changelog is not None:
                topic = self.r.app.topic(source.changelog, partitions=partitions, compacting=True,
                                         key_type=bytes, value_type=bytes, key_serializer="raw",
                                         value_serializer="raw")
                await topic.maybe_declare()

    def _new_consumer(self) -> AIOKafkaConsumer:
        return group_consumer(self.r.kafka, ingest_group_id(self.r.app.conf.id), self.group_instance_id)
