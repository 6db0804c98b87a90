"""Where a serving worker sends what it produces: impressions and feedback, to Kafka or (without one) a list."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from serving.metrics import ServingMetrics
from streams.records import Impression, encode
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Delivers one message; raises if it could not."""

    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...


class MemoryPublisher:
    """Keeps messages in a list: the publisher of a worker without Kafka (tests, offline use)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.fail: Exception | None = None

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append((topic, key, value))


class KafkaPublisher:
    """An aiokafka producer that waits for the broker's acknowledgement of each message."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.producer = None  # aiokafka binds to the running loop, so it is created in start()

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(**self.kafka.aiokafka_options(), linger_ms=5,
                                         max_request_size=4 * 1024 * 1024)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.producer is None:
            raise ConnectionError("the Kafka producer is not started")
        delivery = await self.producer.send(topic, value, key=key)
        await delivery


class ImpressionLog:
    """Fire-and-forget impression logging: a response never waits for Kafka; failures are counted."""

    def __init__(self, publisher: Publisher, topic: str, metrics: ServingMetrics, max_pending: int) -> None:
        self.publisher = publisher
        self.topic = topic
        self.metrics = metrics
        self.max_pending = max_pending
        self._pending: set[asyncio.Task] = set()

    def log(self, impression: Impression) -> None:
        if len(self._pending) >= self.max_pending:
            self.metrics.impressions.labels("dropped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._send(impression))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, impression: Impression) -> None:
        try:
            await self.publisher.send(self.topic, impression.user_id.encode(), encode(impression))
        except Exception as exc:
            self.metrics.impressions.labels("failed").inc()
            log.warning("impression %s not logged: %s", impression.rec_id, exc)
        else:
            self.metrics.impressions.labels("sent").inc()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for impressions still in flight, e.g. at shutdown."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)
