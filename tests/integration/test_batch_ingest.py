"""The batch ingest design that ``recloop bench ingest`` measures keeps the worker's guarantees, on the real broker.

:func:`ops.bench_ingest.batch_ingest` is what the benchmark times against the Faust worker (BENCHMARKS.md,
"Ingest options compared"), so a figure for it only counts if it does the same work: every message parsed by the
worker's parser, each ``event_id`` accepted once, a changelog record per accepted event, and the group's offsets
committed to the end once the changelog holds them.
"""

from __future__ import annotations

import asyncio

import pytest

from ops.bench_ingest import batch_ingest
from ops.kafka_io import group_lag, topic_reader
from ops.replay import OutgoingMessage, file_messages, produce
from streams.records import Interaction, decode
from streams.topics import INTERACTIONS
from tests.conftest import DATA


async def changelog_keys(settings, topic: str) -> list[bytes]:
    keys = []
    async with topic_reader(settings, topic) as (consumer, ends):
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                keys.extend(m.key for m in messages)
    return keys


@pytest.mark.kafka
def test_batch_ingest_accepts_each_event_once_and_commits_after_its_changelog(kafka_settings):
    topic = kafka_settings.topic(INTERACTIONS.name)
    events = [m for m in file_messages(DATA, kafka_settings, limit=1500) if m.kind != "item"]
    broken = OutgoingMessage(topic, b"u1", b'{"event_id": "x", "type": "teleport"}', 0.0, "broken")
    sent = events + events[:300] + [broken]  # 300 redelivered, one the contract refuses
    asyncio.run(produce(sent, kafka_settings))

    result = asyncio.run(batch_ingest(kafka_settings, topic, len(sent), max_records=250))

    assert (result.accepted, result.duplicates, result.dead_lettered) == (len(events), 300, 1)
    keys = asyncio.run(changelog_keys(kafka_settings, result.changelog))
    assert sorted(keys) == sorted(decode(Interaction, m.value).event_id.encode() for m in events)  # each once
    offsets = asyncio.run(group_lag(kafka_settings, f"{topic}-batch-ingest", topic))
    assert all(committed == end for committed, end in offsets.values()), offsets
    assert result.events_per_s > 0
