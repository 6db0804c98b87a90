"""The worker against the real broker: exact counts, idempotent replays, and a dead-letter topic that loses nothing."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ops.kafka_io import group_lag, read_messages
from ops.replay import file_messages, produce
from streams import records
from streams.app import faust_app_id
from streams.ingest_consumer import ingest_group_id
from streams.seen_table import changelog_topic
from streams.settings import WorkerSettings
from streams.topics import MAX_MESSAGE_BYTES
from tests.conftest import DATA, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 10_000


@pytest.fixture(autouse=True)
def ingest_only(monkeypatch):
    """These tests are about ingest; learning has its own tests (test_learning_worker.py)."""
    monkeypatch.setenv("RECLOOP_LEARNER", "off")


def interaction_counts(worker, settings) -> dict:
    return worker.counts().get(settings.topic("interactions"), {})


def committed_to_the_end(settings, group: str, topic: str) -> bool:
    return all(committed == end for committed, end in asyncio.run(group_lag(settings, group, topic)).values())


def test_replay_counts_match_exactly_and_a_second_replay_changes_nothing(kafka_settings, worker_factory):
    messages = file_messages(DATA, kafka_settings, limit=N_EVENTS)
    interactions = [m for m in messages if m.kind != "item"]
    items = [m for m in messages if m.kind == "item"]
    assert len(interactions) == N_EVENTS
    worker = worker_factory()

    asyncio.run(produce(messages, kafka_settings))
    counts = wait_for(lambda: (c := interaction_counts(worker, kafka_settings)).get("accepted") == N_EVENTS and c,
                      timeout_s=240, message=f"{N_EVENTS} accepted interactions")
    expected_types = {kind: sum(1 for m in interactions if m.kind == kind) for kind in ("purchase", "return")}
    assert counts["by_type"] == {k: v for k, v in expected_types.items() if v}
    assert counts["duplicates"] == 0 and counts["dead_lettered"] == 0
    catalog = wait_for(lambda: worker.counts().get(kafka_settings.topic("catalog"), {}).get("accepted") == len(items),
                       timeout_s=60, message="catalog items")
    assert catalog

    # The same replay again: every event is recognised, nothing downstream changes.
    asyncio.run(produce(messages, kafka_settings))
    counts = wait_for(lambda: (c := interaction_counts(worker, kafka_settings)).get("duplicates") == N_EVENTS and c,
                      timeout_s=240, message="second replay seen as duplicates")
    assert counts["accepted"] == N_EVENTS
    assert worker.alive

    # Offsets after effects: the ingest group committed to the end, and the changelog holds each event id once.
    app_id = faust_app_id(kafka_settings, WorkerSettings(app_id=worker.app_id))
    source = kafka_settings.topic("interactions")
    wait_for(lambda: committed_to_the_end(kafka_settings, ingest_group_id(app_id), source), timeout_s=30,
             message="the ingest group's offsets at the end of the interactions")
    keys = [key for key, _ in asyncio.run(read_messages(kafka_settings, changelog_topic(app_id, "seen-interactions")))]
    assert sorted(keys) == sorted(orjson.dumps(records.decode(records.Interaction, m.value).event_id)
                                  for m in interactions)

    # Deduplication state survives a restart: a new worker process recovers it from the changelog.
    worker.stop()
    restarted = worker_factory()
    sample = interactions[:500]
    asyncio.run(produce(sample, kafka_settings))
    counts = wait_for(lambda: (c := interaction_counts(restarted, kafka_settings)).get("duplicates", 0) >= len(sample)
                      and c, timeout_s=180, message="replay after restart seen as duplicates")
    assert counts.get("accepted", 0) == 0


def malformed_messages(rng: random.Random, good_example: dict) -> list[tuple[bytes, str]]:
    """1,000 bad messages of six kinds, each with the kind of reason the DLQ must give."""
    def variant(i: int) -> tuple[bytes, str]:
        kind = i % 6
        base = dict(good_example, event_id=f"bad-{i}")
        if kind == 0:
            return b'{"event_id": "bad-%d", "user_id": ' % i, "invalid json"
        if kind == 1:
            return orjson.dumps(dict(base, ts="yesterday-ish", quantity="six")), "wrong type or value"
        if kind == 2:
            base.pop(rng.choice(["user_id", "item_id", "type", "ts"]))
            return orjson.dumps(base), "missing field"
        if kind == 3:
            return orjson.dumps(dict(base, type="teleport")), "unknown enum value"
        if kind == 4:
            return orjson.dumps(dict(base, padding="x" * (2 * 1024 * 1024))), "too large"
        return b"\xff\xfe\xfa not utf-8 \x80" + bytes([i % 256]), "invalid json"

    return [variant(i) for i in range(1000)]


def test_malformed_messages_go_to_the_dlq_and_good_ones_are_all_processed(kafka_settings, worker_factory):
    rng = random.Random(7)
    good = [m for m in file_messages(DATA, kafka_settings, limit=N_EVENTS) if m.kind != "item"]
    bad = malformed_messages(rng, orjson.loads(good[0].value))
    topic = kafka_settings.topic("interactions")
    mixed: list[tuple[bytes, bytes]] = [(m.key, m.value) for m in good] + [(b"u-bad", value) for value, _ in bad]
    rng.shuffle(mixed)
    worker = worker_factory()

    async def send_all() -> None:
        producer = AIOKafkaProducer(**kafka_settings.aiokafka_options(), max_request_size=MAX_MESSAGE_BYTES,
                                    linger_ms=10)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in mixed]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(send_all())
    counts = wait_for(lambda: (c := interaction_counts(worker, kafka_settings)).get("accepted") == N_EVENTS
                      and c.get("dead_lettered") == len(bad) and c, timeout_s=300,
                      message="all good accepted and all bad dead-lettered")
    assert counts["duplicates"] == 0
    expected_kinds: dict[str, int] = {}
    for _, kind in bad:
        expected_kinds[kind] = expected_kinds.get(kind, 0) + 1
    assert counts["errors"] == expected_kinds

    letters = asyncio.run(read_all(kafka_settings, kafka_settings.topic("dlq"), len(bad)))
    assert len(letters) == len(bad)
    decoded = [records.decode(records.DeadLetter, value) for value in letters]
    assert {letter.value for letter in decoded} == {value for value, _ in bad}
    assert all(letter.source_topic == topic and letter.error and letter.offset >= 0 for letter in decoded)
    assert len({(letter.partition, letter.offset) for letter in decoded}) == len(bad)
    assert worker.alive


async def read_all(settings, topic: str, expected: int, timeout_s: float = 60.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, **settings.aiokafka_options(), auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False, fetch_max_bytes=MAX_MESSAGE_BYTES,
                                max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    await consumer.start()
    values: list[bytes] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(values) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                values.extend(message.value for message in messages)
        # Nothing more than expected should be there either.
        batches = await consumer.getmany(timeout_ms=1000)
        for messages in batches.values():
            values.extend(message.value for message in messages)
    finally:
        await consumer.stop()
    return values
