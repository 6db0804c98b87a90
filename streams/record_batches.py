"""Many records to one partition as a few record batches: one delivery future per batch, not per record.

aiokafka's ``send`` costs a future, a partitioner call and a buffer lookup per record; a worker that writes a
record per event (the deduplication changelog, the learner's input) spends more on that than on the event. A
record batch is built in one buffer and acknowledged once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer


async def send_in_batches(producer: AIOKafkaProducer, topic: str, partition: int,
                          records: Iterable[tuple[bytes | None, bytes | None]]) -> list[asyncio.Future]:
    """Queue ``(key, value)`` records for ``topic[partition]``, in order; the futures resolve when the broker has
    each batch (a failed write raises there)."""
    futures: list[asyncio.Future] = []
    batch = None
    for key, value in records:
        if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
            if batch is not None:  # full: send it, start the next one with this record
                futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a batch always takes its first record
    if batch is not None:
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


class Outbox:
    """Records that ingest handlers write, sent by the ingest loop with its batch as record batches (its producer,
    acks from all replicas) and acknowledged before the batch's offsets are committed.

    >>> outbox = Outbox()
    >>> outbox.add("learner", 0, b"k1", b"v1"); outbox.add("learner", 0, b"k2", b"v2")
    >>> outbox.take(), outbox.take()
    ({('learner', 0): [(b'k1', b'v1'), (b'k2', b'v2')]}, {})
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self._records.setdefault((topic, partition), []).append((key, value))

    def take(self) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]:
        """Everything added since the last call, per partition, in the order added."""
        records, self._records = self._records, {}
        return records
