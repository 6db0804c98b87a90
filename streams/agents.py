"""Thin Faust agents: read raw messages, call :mod:`streams.ingest`, route the outcome.

Processing guarantee: at-least-once delivery from Kafka, made effectively-once for everything
downstream by deduplicating on ``event_id``. An offset is committed only after the agent has
finished with the message (Faust acks an event when the agent takes the next one) and after
the dead letter and changelog writes it caused were handed to the producer, which Faust flushes
before it commits. A crash between processing and commit re-delivers the message; its
``event_id`` is then already in the changelog-backed ``seen`` table and it counts as a
duplicate, not twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, generate_latest

from streams.app import RecloopApp
from streams.dedup import DedupWindow
from streams.ingest import IngestStats, SourcePosition, validate
from streams.records import DeadLetter, ExplanationFeedback, Interaction, Item, encode

log = logging.getLogger(__name__)

#: What receives an accepted record: ``handler(record, position)``, ``position`` being where the record was
#: read (a handler that keeps durable state skips redeliveries by it, see :mod:`streams.monitor_state`).
Handler = Callable[[Any, SourcePosition], Awaitable[None]]


async def _ignore(_: Any) -> None:
    return None


@dataclass
class Downstream:
    """What happens to an accepted record; later stages (learner, metrics) plug in here."""

    interaction: list[Handler] = field(default_factory=list)
    feedback: list[Handler] = field(default_factory=list)
    item: list[Handler] = field(default_factory=list)


class WorkerMetrics:
    """Prometheus counters of one worker process, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter("recloop_ingest_accepted_total", "Valid, first-seen records",
                                ["source"], registry=self.registry)
        self.duplicates = Counter("recloop_ingest_duplicates_total", "Records whose event_id was seen before",
                                  ["source"], registry=self.registry)
        self.dead_lettered = Counter("recloop_ingest_dead_lettered_total", "Invalid messages sent to the DLQ",
                                     ["source"], registry=self.registry)
        self.forgotten = Counter("recloop_dedup_forgotten_total",
                                 "Event ids deleted from the deduplication table: older than its window",
                                 ["source"], registry=self.registry)


def register_ingest_agents(r: RecloopApp, stats: IngestStats, downstream: Downstream | None = None,
                           metrics: WorkerMetrics | None = None) -> WorkerMetrics:
    downstream = downstream or Downstream()
    metrics = metrics or WorkerMetrics()

    windows: list[DedupWindow] = []

    def window() -> DedupWindow:
        windows.append(DedupWindow(r.worker.dedup_window_s, purge_every_s=r.worker.dedup_purge_every_s))
        return windows[-1]

    @r.app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: set, **_: Any) -> None:
        """A partition that moves away may come back with entries another worker wrote: index it again then."""
        for dedup in windows:
            for tp in revoked:
                dedup.forget_partition(tp.partition)

    async def ingest(stream: faust.StreamT, cls: type, seen: faust.Table | None, handlers: list[Handler],
                     dedup: DedupWindow | None = None) -> None:
        async for event in stream.events():
            message = event.message
            source = message.topic
            position = SourcePosition(source, message.partition, message.offset)
            if seen is not None and dedup is not None and (forgotten := dedup.purge(seen, message.partition)):
                stats.forgotten(source, forgotten)
                metrics.forgotten.labels(source).inc(forgotten)
            result = validate(cls, event.value, key=event.key, source=position)
            if isinstance(result, DeadLetter):
                await r.dlq.send(key=source.encode(), value=encode(result))
                stats.dead_lettered(source, result.error)
                metrics.dead_lettered.labels(source).inc()
                log.debug("dead-lettered %s[%d]@%d: %s", source, message.partition, message.offset, result.error)
                continue
            if seen is not None and dedup is not None and not dedup.seen(seen, result.event_id, result.ts, position):
                stats.duplicate(source)
                metrics.duplicates.labels(source).inc()
                continue
            stats.accepted(source, getattr(result, "type", cls.__name__.lower()))
            metrics.accepted.labels(source).inc()
            for handler in handlers:
                await handler(result, position)

    @r.app.agent(r.interactions, name="ingest-interactions")
    async def ingest_interactions(stream: faust.StreamT) -> None:
        await ingest(stream, Interaction, r.seen_interactions, downstream.interaction, window())

    @r.app.agent(r.feedback, name="ingest-explanation-feedback")
    async def ingest_feedback(stream: faust.StreamT) -> None:
        await ingest(stream, ExplanationFeedback, r.seen_feedback, downstream.feedback, window())

    @r.app.agent(r.catalog, name="ingest-catalog")
    async def ingest_catalog(stream: faust.StreamT) -> None:
        # The catalogue is an upsert stream keyed by item_id: no deduplication needed.
        await ingest(stream, Item, None, downstream.item)

    @r.app.page("/counts/")
    async def counts(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(stats.snapshot())

    @r.app.page("/ready/")
    async def ready(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        """Whether the worker consumes: in its group, tables recovered, not rebalancing (503 until then)."""
        consuming = r.app.tables.recovery.completed.is_set() and not r.app.rebalancing
        return web.json({"ready": consuming}, status=200 if consuming else 503)

    @r.app.page("/metrics/")
    async def prometheus(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    return metrics
