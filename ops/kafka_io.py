"""Small helpers for reading whole topics with aiokafka (backfill, benchmarks, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES


@asynccontextmanager
async def topic_reader(kafka: KafkaSettings, topic: str, *, timeout_s: float = 30.0,
                       ) -> AsyncIterator[tuple[AIOKafkaConsumer, dict[TopicPartition, int]]]:
    """A group-less consumer holding every partition of ``topic`` from its beginning.

    It connects as ``kafka`` says (bootstrap servers and security). Yields the consumer and the end
    offset of each partition at the time it was opened.
    """
    consumer = AIOKafkaConsumer(topic, **kafka.aiokafka_options(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                                fetch_max_bytes=MAX_MESSAGE_BYTES)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not consumer.assignment():
            if loop.time() > deadline:
                raise ValueError(f"topic {topic!r} does not exist or has no partitions")
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        yield consumer, await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def read_messages(kafka: KafkaSettings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every ``(key, value)`` of ``topic`` up to its end as of now, partition by partition in offset order."""
    out: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
    async with topic_reader(kafka, topic) as (consumer, ends):
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                out.setdefault(tp.partition, []).extend(
                    (m.offset, m.key, m.value) for m in messages if m.offset < ends[tp])
    return [(key, value) for partition in sorted(out) for _, key, value in sorted(out[partition], key=lambda m: m[0])]


async def group_lag(kafka: KafkaSettings, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """``{partition: (committed offset or None, end offset)}`` of consumer group ``group`` on ``topic``."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_options())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    async with topic_reader(kafka, topic) as (_, ends):
        return {tp.partition: (committed[tp].offset if tp in committed else None, end)
                for tp, end in sorted(ends.items())}
