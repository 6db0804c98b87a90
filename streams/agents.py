"""The worker's ingest and its pages: the batch ingest loop (:mod:`streams.ingest_consumer`) in the Faust app.

Processing guarantee: at-least-once delivery from Kafka, made effectively-once for everything downstream by
deduplicating on ``event_id``. A batch's offsets are committed only after the dead letter, changelog and downstream
writes it caused were acknowledged by the broker. A crash between processing and commit re-delivers the batch;
its event ids are then in the changelog-backed deduplication tables and count as duplicates, not twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, generate_latest

from streams.app import RecloopApp, static_member_id
from streams.ingest import IngestStats, SourcePosition
from streams.ingest_consumer import IngestConsumer
from streams.record_batches import Outbox

log = logging.getLogger(__name__)

#: What receives an accepted record: ``handler(record, position)``, ``position`` being where the record was
#: read (a handler that keeps durable state skips redeliveries by it, see :mod:`streams.monitor_state`).
Handler = Callable[[Any, SourcePosition], Awaitable[None]]


@dataclass
class Downstream:
    """What happens to an accepted record; later stages (learner, metrics) plug in here."""

    interaction: list[Handler] = field(default_factory=list)
    feedback: list[Handler] = field(default_factory=list)
    item: list[Handler] = field(default_factory=list)
    #: Where handlers put the records they write (the learner's input): sent with the batch, before its commit.
    outbox: Outbox = field(default_factory=Outbox)


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

    ingest = IngestConsumer(r, stats, metrics, downstream, group_instance_id=static_member_id(r, "ingest"))

    @r.app.task
    async def ingest_sources() -> None:
        await ingest.run()

    @r.app.on_before_shutdown.connect
    async def stop_ingest(app: faust.App, **_: Any) -> None:
        """After Faust stopped its consumer, before it flushes its producer: the last batch committed."""
        await ingest.stop()

    @r.app.page("/counts/")
    async def counts(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(stats.snapshot())

    @r.app.page("/ready/")
    async def ready(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        """Whether the worker consumes: in its groups, deduplication tables read, not rebalancing (503 until then)."""
        consuming = r.app.tables.recovery.completed.is_set() and not r.app.rebalancing and ingest.ready
        return web.json({"ready": consuming}, status=200 if consuming else 503)

    @r.app.page("/metrics/")
    async def prometheus(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    return metrics
