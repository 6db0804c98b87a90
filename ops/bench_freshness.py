"""``recloop bench freshness``: how long from an event's produce until a serving worker answers with an
adapter trained on it.

Setup, all real processes on a fresh set of topics: a ``recloop worker`` with its learner (the real
MiniLM unless ``--tiny``), one ``recloop serve``, the Online Retail catalogue and a warm-up slice of
history. Once the served adapter covers the warm-up, the live phase produces the next events of the
data at ``rate`` events/s, while

* a consumer of ``model-updates`` reads each published adapter's ``trained_through_ts`` — the
  learner's event-time watermark: the newest interaction ``ts`` whose examples were in the weights
  the gate judged (training the gate refused counts: it was learned and judged, and the next
  version is decided on newer data);
* a client asks the serving worker for ``/recommend`` every ``poll_s`` seconds and notes when each
  ``model_version`` is first answered.

An event's freshness is the time from just before its ``send`` until the first answer from a
version whose watermark reaches the event's ``ts``. The watermark is per event time, and the
interactions topic has several partitions, so an event may be counted as covered up to one
ingest batch (~a second) early or late; baskets share one ``ts``. The stream goes on after the
timed events (the gate judges training on the events that follow it), until a served version covers
the last timed event or ``drain_s`` passes; timed events never covered are counted in ``uncovered``
and left out of the percentiles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ops.processes import ChildProcess, free_port, get_json, recloop_env, wait_json
from ops.replay import OutgoingMessage, file_messages, produce
from ops.topic_admin import delete_topics, fresh_run_topics
from streams.records import AdapterUpdate, decode
from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES, MODEL_UPDATES

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"
KEY = "bench-freshness-key"
WATERMARK = "trained_through_ts"


def freshness_seconds(produced: Sequence[tuple[float, float]], served: Sequence[tuple[float, str]],
                      watermark: dict[str, float]) -> list[float | None]:
    """Per produced event ``(event ts, wall time produced)``: seconds until the first served answer
    ``(wall time, version)`` from a version whose watermark reaches the event's ts; ``None``: never.

    >>> produced = [(100.0, 10.0), (101.0, 11.0), (102.0, 12.0)]
    >>> served = [(9.0, "v1"), (15.0, "v2"), (30.0, "v3")]
    >>> freshness_seconds(produced, served, {"v1": 100.0, "v2": 101.0, "v3": 101.5})
    [5.0, 4.0, None]

    An answer seen before the event was produced does not count, whatever its watermark:

    >>> freshness_seconds([(100.0, 20.0)], [(9.0, "v1"), (25.0, "v1")], {"v1": 100.0})
    [5.0]
    """
    out: list[float | None] = []
    for event_ts, produced_at in produced:
        latency = None
        for seen_at, version in served:
            if seen_at >= produced_at and watermark.get(version, float("-inf")) >= event_ts:
                latency = seen_at - produced_at
                break
        out.append(latency)
    return out


@dataclass
class Observations:
    """What the live phase saw, in wall-clock seconds (``time.time``)."""

    produced: list[tuple[float, float]] = field(default_factory=list)  # (event ts, produced at)
    served: list[tuple[float, str]] = field(default_factory=list)  # (first answered at, version)
    watermark: dict[str, float] = field(default_factory=dict)  # version -> trained_through_ts
    published_at: dict[str, float] = field(default_factory=dict)  # version -> broker timestamp
    poll_errors: int = 0

    def covered(self, event_ts: float, produced_at: float = 0.0) -> bool:
        """A version answered since ``produced_at`` has a watermark reaching ``event_ts``."""
        return freshness_seconds([(event_ts, produced_at)], self.served, self.watermark)[0] is not None


class LivePhase:
    """Produces the live events at a fixed rate while following the updates topic and the serving worker."""

    def __init__(self, settings: KafkaSettings, url: str, user_id: str, *, poll_s: float) -> None:
        self.settings = settings
        self.url = url
        self.user_id = user_id
        self.poll_s = poll_s
        self.seen = Observations()
        self._stop = asyncio.Event()

    async def follow_updates(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(self.settings.topic(MODEL_UPDATES.name), **self.settings.aiokafka_options(),
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    fetch_max_bytes=MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        await consumer.start()
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for messages in batches.values():
                    for message in messages:
                        update = decode(AdapterUpdate, message.value)
                        if WATERMARK in update.metrics:
                            self.seen.watermark[update.version] = update.metrics[WATERMARK]
                            self.seen.published_at[update.version] = message.timestamp / 1000
        finally:
            await consumer.stop()

    async def poll_serving(self) -> None:
        import httpx

        last = None
        async with httpx.AsyncClient(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = await client.get(f"{self.url}/recommend", params={"user_id": self.user_id, "k": 10})
                    version = response.json().get("model_version") if response.status_code == 200 else None
                except httpx.HTTPError:
                    version = None
                if version is None:
                    self.seen.poll_errors += 1
                elif version != last:
                    self.seen.served.append((time.time(), version))
                    last = version
                await asyncio.sleep(self.poll_s)

    async def produce_live(self, events: Sequence[OutgoingMessage], rate: float, measured: int,
                           done: asyncio.Event) -> None:
        """Produce ``events`` at ``rate``; the first ``measured`` are timed, the rest keep the stream flowing
        (the gate judges training on the *next* events) until ``done``."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self.settings.aiokafka_options(), acks="all", enable_idempotence=True,
                                    linger_ms=0)
        await producer.start()
        try:
            start = time.monotonic()
            for n, message in enumerate(events):
                if done.is_set():
                    break
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                produced_at = time.time()
                await producer.send(message.topic, message.value, key=message.key)
                if n < measured:
                    self.seen.produced.append((message.ts, produced_at))
            await producer.flush()
        finally:
            await producer.stop()

    async def run(self, events: Sequence[OutgoingMessage], *, rate: float, measured: int, drain_s: float,
                  until_covered: float | None = None) -> Observations:
        """Produce ``events`` (the first ``measured`` timed) until a served version covers the last timed one,
        or ``drain_s`` after it was produced; with no ``events``, only wait for ``until_covered``."""
        covered = asyncio.Event()
        followers = [asyncio.create_task(self.follow_updates()), asyncio.create_task(self.poll_serving())]
        producing = asyncio.create_task(self.produce_live(events, rate, measured, covered)) if events else None
        try:
            since = 0.0
            if events:
                while len(self.seen.produced) < measured and not producing.done():
                    await asyncio.sleep(0.2)
                until_covered, since = self.seen.produced[-1]
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and not self.seen.covered(until_covered, since):
                if any(task.done() for task in followers):
                    break
                await asyncio.sleep(0.2)
        finally:
            covered.set()
            self._stop.set()
            await asyncio.gather(*followers, *([producing] if producing else []))
        return self.seen


def summarize(seen: Observations) -> dict:
    latencies = freshness_seconds(seen.produced, seen.served, seen.watermark)
    covered = np.array([x for x in latencies if x is not None])
    versions = [version for _, version in seen.served]
    return {"events": len(latencies), "covered": int(covered.size), "uncovered": len(latencies) - int(covered.size),
            "p50_s": round(float(np.percentile(covered, 50)), 2) if covered.size else None,
            "p99_s": round(float(np.percentile(covered, 99)), 2) if covered.size else None,
            "mean_s": round(float(covered.mean()), 2) if covered.size else None,
            "max_s": round(float(covered.max()), 2) if covered.size else None,
            "versions_served": len(versions), "versions_published": len(seen.watermark),
            "poll_errors": seen.poll_errors}


def live_slice(messages: list[OutgoingMessage], *, warmup: int, live: int
               ) -> tuple[list[OutgoingMessage], list[OutgoingMessage], list[OutgoingMessage]]:
    """Catalogue, warm-up history and live events (timed ones, then the stream that follows them):
    the last ``warmup + live`` interactions, in order."""
    items = [m for m in messages if m.kind == "item"]
    events = [m for m in messages if m.kind != "item"][-(warmup + live):]
    return items, events[:warmup], events[warmup:]


def run_bench_freshness(base_settings: KafkaSettings, *, tiny: bool = False, device: str = "cpu",
                        warmup: int = 3000, rate: float = 10.0, duration_s: float = 120.0,
                        warmup_timeout_s: float = 900.0, drain_s: float = 180.0, poll_s: float = 0.1) -> dict:
    settings = fresh_run_topics(base_settings, "fresh")
    home = settings.home
    measured = int(rate * duration_s)
    items, warm, live = live_slice(file_messages(DATA, settings), warmup=warmup,
                                   live=measured + int(rate * drain_s) + 1)
    user_id = next(m.key.decode() for m in reversed(warm) if m.kind == "purchase")
    level = os.environ.get("RECLOOP_LOG_LEVEL", "INFO")
    env = recloop_env(settings, RECLOOP_ADAPTER_KEY=KEY, RECLOOP_LEARNER_TINY="1" if tiny else "0",
                      RECLOOP_LEARNER_DEVICE=device, RECLOOP_LOG_LEVEL=level,
                      # a decision every 8 baskets: at 10 events/s the default 200-basket window closes
                      # once in ~7 minutes, and freshness measures the cadence, not the model
                      RECLOOP_LEARNER_WINDOW_BASKETS=os.environ.get("RECLOOP_LEARNER_WINDOW_BASKETS", "8"))
    worker_port, serve_port = free_port(), free_port()
    worker = ChildProcess(["worker"], {**env, "RECLOOP_WORKER_WEB_PORT": str(worker_port)}, home / "worker.log")
    server = ChildProcess(["serve", "--port", str(serve_port)] + (["--tiny"] if tiny else []), env,
                          home / "serve.log")
    url = f"http://127.0.0.1:{serve_port}"
    started = time.monotonic()
    try:
        worker.start()
        server.start()
        wait_json(f"http://127.0.0.1:{worker_port}/counts/", worker, timeout_s=300)
        wait_json(f"{url}/healthz", server, timeout_s=300)
        asyncio.run(produce(items + warm, settings))
        log.info("warm-up: %d items and %d events produced; waiting for an adapter trained on them",
                 len(items), len(warm))
        # the newest warm-up events are judged only once live events follow them: wait for the rest
        settled = warm[len(warm) * 3 // 4].ts
        warmed = asyncio.run(LivePhase(settings, url, user_id, poll_s=1.0).run(
            [], rate=rate, measured=0, drain_s=warmup_timeout_s, until_covered=settled))
        if not warmed.covered(settled):
            raise RuntimeError(f"no served adapter covered the warm-up within {warmup_timeout_s:.0f}s; "
                               f"see {home / 'worker.log'} and {home / 'serve.log'}")
        warmup_s = time.monotonic() - started
        log.info("warm-up served after %.0fs; timing %d live events at %.1f/s", warmup_s, measured, rate)
        seen = asyncio.run(LivePhase(settings, url, user_id, poll_s=poll_s).run(
            live, rate=rate, measured=measured, drain_s=drain_s))
        learner = get_json(f"http://127.0.0.1:{worker_port}/learner/") or {}
    finally:
        server.stop()
        worker.stop()
        delete_topics(settings)
    return {"bench": "freshness", "base": "tiny-bert" if tiny else "all-MiniLM-L6-v2", "device": device,
            "rate_events_per_s": rate, "live_s": duration_s, "warmup_events": len(warm), **summarize(seen),
            "warmup_s": round(warmup_s, 1), "learner_refused": learner.get("refused"),
            "learner_published": learner.get("n_published"), "cpus": os.cpu_count(),
            "logs": str(home), "targets": {"cpu_p50_s": 60, "gpu_p50_s": 3}}

