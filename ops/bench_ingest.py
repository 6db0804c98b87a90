"""``recloop bench ingest``: the worker's ingest throughput against a plain consumer, same topic, same run.

Both read the same N pre-produced interactions. The plain consumer (aiokafka + orjson.loads) is the
ceiling for Python on this machine; the worker does everything it does in production (validation,
deduplication against its changelog-backed table, counting). Each rate is N over the time from the
first to the last message processed, so start-up and rebalancing are not counted for either.
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


def run_bench_ingest(base: KafkaSettings, *, events: int) -> dict:
    settings = fresh_run_topics(base, "bench")
    topic = settings.topic(INTERACTIONS.name)
    messages = [m for m in file_messages(DATA, settings, limit=events) if m.kind != "item"]
    asyncio.run(produce(messages, settings))
    n = len(messages)
    raw_rate = asyncio.run(raw_consume(settings, topic, n))

    port = free_port()
    worker = ChildProcess(["worker"], recloop_env(settings, RECLOOP_WORKER_WEB_PORT=str(port),
                                                  RECLOOP_WORKER_APP_ID=f"bench-{uuid.uuid4().hex[:6]}",
                                                  **demo_key_unless_configured()),
                          settings.home / "worker.log").start()
    url = f"http://127.0.0.1:{port}/counts/"
    try:
        wait_json(url, worker, timeout_s=120)
        deadline = time.monotonic() + max(120.0, n / 200)
        counts: dict = {}
        while time.monotonic() < deadline:
            counts = (get_json(url) or {}).get(topic, {})
            if counts.get("accepted", 0) + counts.get("duplicates", 0) >= n:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"worker processed {counts} of {n} events in time")
    finally:
        worker.stop()
    worker_rate = n / counts["busy_s"]
    return {"bench": "ingest", "events": n, "partitions": settings.partitions,
            "worker_events_per_s": round(worker_rate, 1), "raw_events_per_s": round(raw_rate, 1),
            "ratio": round(worker_rate / raw_rate, 3), "target_ratio": 0.5}
