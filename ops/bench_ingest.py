"""``recloop bench ingest``: the worker's ingest throughput against a plain consumer, same topic, same run.

Both read the same N pre-produced interactions. The plain consumer (aiokafka + orjson.loads) is the
ceiling for Python on this machine; the worker does everything it does in production (validation,
deduplication against its changelog-backed tables, the online monitor, counting; the learner off: ingest is
measured). ``--learner`` runs the one worker of a deployment that trains (tiny encoder): every accepted event is
also forwarded to the learner's input topic and read by its trainer; ``learner_behind_s`` is how long after
ingest the learner had received every event (learned, or in its inbox). Each rate is
N over the time from the first to the last message processed, so start-up and rebalancing are not counted for
either. ``--workers N`` runs N workers of one group on the topic's partitions (``--partitions``) and reports
each worker's rate and the group's (N over the longest worker's first-to-last time).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import orjson

from ops.kafka_io import topic_reader
from ops.processes import ChildProcess, demo_key_unless_configured, free_port, get_json, recloop_env, wait_json
from ops.replay import file_messages, produce
from ops.topic_admin import fresh_run_topics
from streams.settings import KafkaSettings
from streams.topics import INTERACTIONS

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"


async def raw_consume(settings: KafkaSettings, topic: str, expected: int) -> float:
    """Events/s of a bare aiokafka consumer decoding every value with orjson."""
    async with topic_reader(settings, topic) as (consumer, _):
        seen, first = 0, None
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                    seen += 1
                if first is None and seen:
                    first = time.monotonic()
        return expected / (time.monotonic() - first)


def _learner_behind_s(url: str, n: int, deadline: float) -> float | None:
    """Seconds after ingest until the worker's learner had received ``n`` events: learned or waiting in its inbox
    (None: not before ``deadline``)."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        page = get_json(f"{url}/learner/") or {}
        if page.get("events", 0) + page.get("pending_events", 0) >= n:
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def run_bench_ingest(base: KafkaSettings, *, events: int, workers: int = 1, partitions: int | None = None,
                     learner: bool = False) -> dict:
    """One worker: pre-produced events, first to last message. Several (``workers`` > 1): they join one group
    first (all ``/ready/``), then the events are produced, so each worker's rate is over its own partitions."""
    if partitions is not None:
        base = base.model_copy(update={"partitions": partitions})
    settings = fresh_run_topics(base, "bench")
    topic = settings.topic(INTERACTIONS.name)
    messages = [m for m in file_messages(DATA, settings, limit=events) if m.kind != "item"]
    n = len(messages)
    if workers == 1:
        asyncio.run(produce(messages, settings))
        raw_rate = asyncio.run(raw_consume(settings, topic, n))
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    ports = [free_port() for _ in range(workers)]
    learning = ({"RECLOOP_LEARNER": "on", "RECLOOP_LEARNER_TINY": "1", **demo_key_unless_configured()} if learner
                else {"RECLOOP_LEARNER": "off"})
    started = [ChildProcess(["worker"], recloop_env(settings, RECLOOP_WORKER_WEB_PORT=str(port),
                                                    RECLOOP_WORKER_APP_ID=app_id, **learning),
                            settings.home / f"worker-{port}.log").start() for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, worker in zip(urls, started, strict=True):
            wait_json(f"{url}/counts/", worker, timeout_s=120)
        if workers > 1:
            for url, worker in zip(urls, started, strict=True):  # one stable group before the first event
                wait_json(f"{url}/ready/", worker, timeout_s=180, accept=lambda page: page.get("ready") is True)
            asyncio.run(produce(messages, settings))
            raw_rate = asyncio.run(raw_consume(settings, topic, n))
        deadline = time.monotonic() + max(120.0, n / 200)
        counts: list[dict] = []
        while time.monotonic() < deadline:
            counts = [(get_json(f"{url}/counts/") or {}).get(topic, {}) for url in urls]
            if sum(c.get("accepted", 0) + c.get("duplicates", 0) for c in counts) >= n:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"workers processed {counts} of {n} events in time")
        if learner:
            learner_s = _learner_behind_s(urls[0], n, time.monotonic() + max(120.0, n / 200))
    finally:
        for worker in started:
            worker.stop()
    per_worker = [round(c["accepted"] / c["busy_s"], 1) if c.get("busy_s") else 0.0 for c in counts]
    worker_rate = n / max(c.get("busy_s") or 0.0 for c in counts)
    result = {"bench": "ingest", "events": n, "partitions": settings.partitions, "workers": workers,
              "worker_events_per_s": round(worker_rate, 1), "raw_events_per_s": round(raw_rate, 1),
              "ratio": round(worker_rate / raw_rate, 3), "target_ratio": 0.5}
    if learner:
        result.update(learner="on (tiny encoder)", learner_behind_s=learner_s)
    if workers > 1:
        result.update(per_worker_events_per_s=per_worker, accepted_per_worker=[c.get("accepted", 0) for c in counts],
                      duplicates=sum(c.get("duplicates", 0) for c in counts))
    return result
