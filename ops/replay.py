"""Replay and backfill: put history on the topics in event-time order, idempotently.

Sources:
- files read by :mod:`ops.shop_files` (the same reader as ``recloop eval``): parquet, CSV or JSONL
  whose rows are already contract records (interactions, explanation feedback or catalog items), or
  the Online Retail parquet/CSV through its one documented mapping (:mod:`ops.retail_events`);
- ``topic:NAME`` — a time range of an existing topic, copied into another topic (backfill).

Rows that are not valid records are skipped and counted with their reason; they are never sent.
Every produced event keeps its ``event_id``, so a second replay of the same source is
recognised as duplicates by the worker and changes no downstream count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from ops.kafka_io import topic_reader
from ops.shop_files import SUFFIXES, contract_records, read_records
from streams import records
from streams.records import ExplanationFeedback, Interaction, InvalidRecord, Item
from streams.settings import KafkaSettings
from streams.topics import CATALOG, EXPLANATION_FEEDBACK, INTERACTIONS, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    ts: float  #: event time, seconds; drives --speedup pacing
    kind: str  #: what it is, for the summary ("purchase", "item", …)


@dataclass
class ReplaySummary:
    produced: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total_produced(self) -> int:
        return sum(self.produced.values())

    def as_dict(self) -> dict:
        return {"produced": dict(self.produced), "produced_total": self.total_produced,
                "skipped": dict(self.skipped), "skipped_total": sum(self.skipped.values()),
                "seconds": round(self.seconds, 3),
                "events_per_s": round(self.total_produced / self.seconds, 1) if self.seconds else None}


class Pacer:
    """Holds the producer back to ``rate`` events/s, or to event time sped up ``speedup`` times.

    With neither, it never waits (as fast as possible).
    """

    def __init__(self, *, rate: float | None = None, speedup: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and speedup is not None:
            raise ValueError("choose --rate or --speedup, not both")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise ValueError("--rate and --speedup must be positive")
        self.rate, self.speedup, self.clock = rate, speedup, clock
        self._start: float | None = None
        self._first_ts: float | None = None
        self._count = 0

    def delay(self, event_ts: float) -> float:
        """Seconds to wait before sending the next event (and count it as sent).

        >>> t = [0.0]
        >>> p = Pacer(rate=10, clock=lambda: t[0])
        >>> [round(p.delay(0), 2) for _ in range(3)]
        [0.0, 0.1, 0.2]
        >>> q = Pacer(speedup=60, clock=lambda: t[0])
        >>> q.delay(1000.0), q.delay(1600.0)
        (0.0, 10.0)
        """
        now = self.clock()
        if self._start is None:
            self._start, self._first_ts = now, event_ts
        self._count += 1
        if self.rate is not None:
            due = self._start + (self._count - 1) / self.rate
        elif self.speedup is not None:
            due = self._start + max(0.0, event_ts - self._first_ts) / self.speedup
        else:
            return 0.0
        return max(0.0, due - now)


# ------------------------------------------------------------------ sources


def file_messages(path: Path, settings: KafkaSettings, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None, skipped: Counter | None = None) -> list[OutgoingMessage]:
    """All messages of a file (:func:`ops.shop_files.read_records`), catalog items first, then events in
    event-time order."""
    if not path.exists():
        raise FileNotFoundError(f"replay source {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"unsupported replay source {path.name}: use .parquet, .csv or .jsonl, or topic:NAME")
    found = read_records(path, since=since, until=until, limit=limit)
    if skipped is not None:
        skipped.update(found.skipped)
    return [_message(settings, item) for item in found.items] + [_message(settings, event) for event in found.events]


def contract_messages(rows: Iterable[dict], settings: KafkaSettings, *, since: float | None, until: float | None,
                      limit: int | None, skipped: Counter) -> list[OutgoingMessage]:
    """Validate rows that are already contract records; invalid ones are counted, not sent."""
    found = contract_records(rows, since=since, until=until, limit=limit, skipped=skipped)
    return [_message(settings, item) for item in found.items] + [_message(settings, event) for event in found.events]


def _message(settings: KafkaSettings, record: Item | Interaction | ExplanationFeedback) -> OutgoingMessage:
    if isinstance(record, Item):
        return OutgoingMessage(settings.topic(CATALOG.name), record.item_id.encode(), records.encode(record),
                               0.0, "item")
    spec = EXPLANATION_FEEDBACK if isinstance(record, ExplanationFeedback) else INTERACTIONS
    kind = record.type if isinstance(record, Interaction) else "explanation_feedback"
    return OutgoingMessage(settings.topic(spec.name), record.user_id.encode(), records.encode(record),
                           record.ts, kind)


async def topic_messages(source: str, target: str, settings: KafkaSettings, *, since: float | None,
                         until: float | None, limit: int | None, skipped: Counter) -> list[OutgoingMessage]:
    """Backfill: the messages of ``source`` whose event time is in [since, until), for ``target``.

    The range is read from the records' own ``ts`` (event time), not broker timestamps, so it
    means the same thing however and whenever the source topic was written.
    """
    out: list[OutgoingMessage] = []
    async with topic_reader(settings, source) as (consumer, end):
        remaining = {tp for tp, offset in end.items() if offset > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= end[tp] - 1:
                        remaining.discard(tp)
                    ts = _event_ts(message.value)
                    if ts is None:
                        skipped["no event time (not a JSON record with ts)"] += 1
                        continue
                    if (since is not None and ts < since) or (until is not None and ts >= until):
                        continue
                    out.append(OutgoingMessage(target, message.key, message.value, ts, "backfill"))
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    out.sort(key=lambda m: m.ts)
    return out[:limit] if limit is not None else out


def _event_ts(value: bytes | None) -> float | None:
    try:
        data = orjson.loads(value) if value is not None else None
        ts = data.get("ts") if isinstance(data, dict) else None
        return float(records._timestamp(ts)) if ts is not None else None
    except (orjson.JSONDecodeError, InvalidRecord, TypeError, ValueError):
        return None


# ------------------------------------------------------------------ producing


#: How long a replay keeps resending while the broker is unreachable or electing leaders (a restart) before it
#: gives up. Resending is safe: every event keeps its ``event_id``, so a copy that did arrive is a duplicate the
#: worker drops.
OUTAGE_PATIENCE_S = 600.0


class PatientProducer:
    """An idempotent producer that sends windows of messages and rides broker outages out.

    A window that fails with a broker error (unreachable, restarting, electing leaders, or an idempotence
    sequence the restarted broker no longer knows) is sent again by a *new* producer (a new producer id, so
    no stale sequence numbers), for up to ``patience_s`` of trying.
    """

    def __init__(self, settings: KafkaSettings, patience_s: float = OUTAGE_PATIENCE_S) -> None:
        self.settings, self.patience_s = settings, patience_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        deadline = time.monotonic() + self.patience_s
        while True:
            producer = AIOKafkaProducer(**self.settings.aiokafka_options(), acks="all", enable_idempotence=True,
                                        linger_ms=20, max_batch_size=512 * 1024, max_request_size=MAX_MESSAGE_BYTES,
                                        request_timeout_ms=60_000)
            try:
                await producer.start()
                self._producer = producer
                return
            except KafkaError as exc:
                await producer.stop()
                if time.monotonic() > deadline:
                    raise
                log.warning("broker not reachable (%s): retrying", exc)
                await asyncio.sleep(2.0)

    async def send(self, batch: list[OutgoingMessage]) -> None:
        """Send ``batch`` and wait for every acknowledgement."""
        deadline = time.monotonic() + self.patience_s
        while True:
            try:
                pending = [await self._producer.send(m.topic, m.value, key=m.key) for m in batch]
                await asyncio.gather(*pending)
                return
            except KafkaError as exc:
                if time.monotonic() > deadline or isinstance(exc, MessageSizeTooLargeError):
                    raise
                log.warning("%d messages not acknowledged (%s): sending them again", len(batch), exc)
                await self.stop()
                await asyncio.sleep(2.0)
                await self.start()

    async def stop(self) -> None:
        if self._producer is not None:
            try:
                await self._producer.stop()
            except KafkaError as exc:
                log.debug("producer stopped with %s", exc)
            self._producer = None


async def produce(messages: list[OutgoingMessage], settings: KafkaSettings, *, pacer: Pacer | None = None,
                  on_progress: Callable[[int], None] | None = None, window: int = 5000,
                  patience_s: float = OUTAGE_PATIENCE_S) -> ReplaySummary:
    """Send ``messages`` in order (windows of ``window``, or one by one while paced) with a
    :class:`PatientProducer`; returns what was produced. A broker restart is ridden out, not fatal."""
    pacer = pacer or Pacer()
    summary = ReplaySummary()
    producer = PatientProducer(settings, patience_s)
    await producer.start()
    started = time.monotonic()
    try:
        batch: list[OutgoingMessage] = []
        for message in messages:
            delay = pacer.delay(message.ts) if message.kind != "item" else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            batch.append(message)
            if len(batch) >= window or delay > 0:
                await producer.send(batch)
                _count(summary, batch, on_progress)
                batch = []
        if batch:
            await producer.send(batch)
            _count(summary, batch, on_progress)
    finally:
        await producer.stop()
        summary.seconds = time.monotonic() - started
    return summary


def _count(summary: ReplaySummary, batch: list[OutgoingMessage], on_progress: Callable[[int], None] | None) -> None:
    for message in batch:
        summary.produced[message.kind] += 1
    if on_progress:
        on_progress(len(batch))


async def replay(source: str, settings: KafkaSettings, *, since: float | None = None, until: float | None = None,
                 limit: int | None = None, rate: float | None = None, speedup: float | None = None,
                 target: str | None = None, progress_factory: Callable[[int], Callable[[int], None]] | None = None,
                 ) -> ReplaySummary:
    """Replay ``source`` (a file path or ``topic:NAME``) onto the contract topics (or ``target``)."""
    pacer = Pacer(rate=rate, speedup=speedup)
    skipped: Counter = Counter()
    if source.startswith("topic:"):
        name = source.removeprefix("topic:")
        if not target:
            raise ValueError("backfill from a topic needs --to TOPIC (the topic to write into)")
        messages = await topic_messages(name, target, settings, since=since, until=until, limit=limit,
                                        skipped=skipped)
    else:
        messages = await asyncio.to_thread(file_messages, Path(source), settings, since=since, until=until,
                                           limit=limit, skipped=skipped)
        if target:
            messages = [OutgoingMessage(target, m.key, m.value, m.ts, m.kind) for m in messages]
    log.info("replaying %d messages from %s", len(messages), source)
    on_progress = progress_factory(len(messages)) if progress_factory else None
    summary = await produce(messages, settings, pacer=pacer, on_progress=on_progress)
    summary.skipped.update(skipped)
    return summary
