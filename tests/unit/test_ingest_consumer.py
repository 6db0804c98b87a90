"""The ingest loop's batch handling without a broker: small fakes stand in for the Faust app's dead-letter topic
and for the changelog producer (they record what was sent); the broker-backed tests of the whole worker are
``tests/integration/test_ingest_worker.py``, ``test_dedup_window.py`` and ``test_workers_share_partitions.py``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
from aiokafka import TopicPartition

from streams.agents import Downstream, WorkerMetrics
from streams.ingest import IngestStats
from streams.ingest_consumer import IngestConsumer
from streams.seen_table import SeenTable
from streams.settings import KafkaSettings, WorkerSettings


class Batch:
    def __init__(self, size: int) -> None:
        self.records, self.size = [], size

    def append(self, *, key, value, timestamp):
        if len(self.records) == self.size:
            return None
        self.records.append((key, value))
        return object()


class ChangelogProducer:
    """Record batches as the changelog producer would send them: (topic, partition, records)."""

    def __init__(self, batch_size: int = 1000) -> None:
        self.sent, self.batch_size = [], batch_size

    def create_batch(self) -> Batch:
        return Batch(self.batch_size)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int):
        self.sent.append((topic, partition, batch.records))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class DeadLetters:
    def __init__(self) -> None:
        self.sent = []

    async def send(self, *, key, value) -> None:
        self.sent.append(orjson.loads(value))


def message(topic: str, partition: int, offset: int, value: bytes):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=b"u1", value=value)


def interaction(event_id: str, ts: float = 1.3e9) -> bytes:
    return orjson.dumps({"event_id": event_id, "user_id": "u1", "item_id": "i1", "type": "purchase", "ts": ts})


def ingest(tmp_path, window_s: float = 3600.0, batch_size: int = 1000):
    kafka = KafkaSettings(home=tmp_path)
    r = SimpleNamespace(app=SimpleNamespace(conf=SimpleNamespace(id="w")), kafka=kafka,
                        worker=WorkerSettings(dedup_window_s=window_s, dedup_purge_every_s=0.001), dlq=DeadLetters())
    received = []

    async def handler(record, position) -> None:
        received.append((record.event_id, position.offset))

    consumer = IngestConsumer(r, IngestStats(), WorkerMetrics(), Downstream(interaction=[handler]))
    consumer._producer = ChangelogProducer(batch_size)
    for source in consumer.sources.values():
        if source.changelog is not None:
            source.tables[0] = SeenTable(0)
    return consumer, received


def test_a_batch_is_validated_deduplicated_handed_on_and_its_table_changes_sent_to_the_changelog(tmp_path):
    consumer, received = ingest(tmp_path)
    topic = consumer.r.kafka.topic("interactions")
    batch = [message(topic, 0, 0, interaction("e1")), message(topic, 0, 1, b"{oops"),
             message(topic, 0, 2, interaction("e2")), message(topic, 0, 3, interaction("e1"))]  # e1 again: duplicate

    asyncio.run(consumer._handle(TopicPartition(topic, 0), batch))

    assert received == [("e1", 0), ("e2", 2)]
    assert [letter["offset"] for letter in consumer.r.dlq.sent] == [1]
    assert consumer.stats.snapshot()[topic] | {"busy_s": 0} == {
        "accepted": 2, "duplicates": 1, "dead_lettered": 1, "dedup_forgotten": 0, "by_type": {"purchase": 2},
        "errors": {"invalid json": 1}, "busy_s": 0}
    [(changelog, partition, records)] = consumer._producer.sent
    assert (changelog, partition) == ("w-seen-interactions-changelog", 0)
    assert [(orjson.loads(k), orjson.loads(v)[:3]) for k, v in records] == [("e1", [1.3e9, 0, 0]),
                                                                              ("e2", [1.3e9, 0, 2])]
    assert len(consumer._pending) == 1  # the commit waits for this acknowledgement


def test_the_same_message_read_again_is_handled_again_but_its_event_id_in_another_message_is_not(tmp_path):
    consumer, received = ingest(tmp_path)
    topic = consumer.r.kafka.topic("interactions")
    tp = TopicPartition(topic, 0)
    asyncio.run(consumer._handle(tp, [message(topic, 0, 5, interaction("e1"))]))
    asyncio.run(consumer._handle(tp, [message(topic, 0, 5, interaction("e1")),  # redelivered after a crash
                                      message(topic, 0, 9, interaction("e1"))]))  # a replay
    assert received == [("e1", 5), ("e1", 5)]
    assert consumer.stats.snapshot()[topic]["duplicates"] == 1


def test_full_changelog_batches_are_sent_and_a_new_one_started(tmp_path):
    consumer, _ = ingest(tmp_path, batch_size=2)
    topic = consumer.r.kafka.topic("interactions")
    asyncio.run(consumer._handle(TopicPartition(topic, 0),
                                 [message(topic, 0, i, interaction(f"e{i}")) for i in range(5)]))
    assert [len(records) for _, _, records in consumer._producer.sent] == [2, 2, 1]
    assert len(consumer._pending) == 3


def test_expired_ids_are_purged_with_tombstones(tmp_path):
    consumer, _ = ingest(tmp_path, window_s=0.01)
    topic = consumer.r.kafka.topic("interactions")
    asyncio.run(consumer._handle(TopicPartition(topic, 0), [message(topic, 0, 0, interaction("e1"))]))
    consumer._producer.sent.clear()

    async def later() -> None:
        await asyncio.sleep(0.05)
        await consumer._purge()

    asyncio.run(later())
    assert [records for _, _, records in consumer._producer.sent] == [[(b'"e1"', None)]]
    assert consumer.stats.snapshot()[topic]["dedup_forgotten"] == 1


def test_a_revoked_partition_drops_its_table_and_the_worker_is_not_ready_until_the_next_assignment(tmp_path):
    consumer, _ = ingest(tmp_path)
    topic = consumer.r.kafka.topic("interactions")
    asyncio.run(consumer.on_partitions_revoked({TopicPartition(topic, 0)}))
    assert consumer.sources[topic].tables == {} and consumer.rebalancing and not consumer.ready


class FetchedConsumer:
    """What one fetch brought, per partition; getmany hands out the asked partitions' records (a small fake)."""

    def __init__(self, fetched: dict) -> None:
        self.fetched = fetched

    def assignment(self) -> set:
        return set(self.fetched)

    async def getmany(self, *partitions, timeout_ms: int, max_records: int) -> dict:
        asked = partitions or list(self.fetched)
        return {tp: self.fetched.pop(tp) for tp in asked if self.fetched.get(tp)}


def test_the_catalogue_is_handed_out_before_the_events_fetched_with_it(tmp_path):
    consumer, _ = ingest(tmp_path)
    interactions, catalogue = TopicPartition(consumer.r.kafka.topic("interactions"), 0), \
        TopicPartition(consumer.r.kafka.topic("catalog"), 0)
    consumer._consumer = FetchedConsumer({interactions: ["purchase"], catalogue: ["item"]})

    async def two_polls() -> list:
        return [await consumer._poll(), await consumer._poll()]

    assert asyncio.run(two_polls()) == [{catalogue: ["item"]}, {interactions: ["purchase"]}]


def test_the_handlers_outbox_is_sent_as_record_batches_and_acknowledged_before_the_offsets_are_committed(tmp_path):
    consumer, _ = ingest(tmp_path, batch_size=2)
    events = []

    async def flush() -> None:
        events.append("faust producer flushed")

    async def commit() -> None:
        events.append(("commit", [(topic, partition, len(records)) for topic, partition, records
                                  in consumer._producer.sent]))

    consumer.r.app.producer = SimpleNamespace(flush=flush)
    consumer._consumer = SimpleNamespace(commit=commit)
    for i in range(3):
        consumer.outbox.add("w-learner-events", 0, f"k{i}".encode(), b"v")
    asyncio.run(consumer._commit())
    assert events == ["faust producer flushed", ("commit", [("w-learner-events", 0, 2), ("w-learner-events", 0, 1)])]
    assert consumer.outbox.take() == {} and consumer._pending == []
