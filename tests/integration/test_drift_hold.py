"""A critical drift alarm on the item mix, read from ``recloop.ops.drift``, holds the live learner's publishing.

Real broker and worker (learner on, tiny encoder): the learner publishes from the first part of the history;
then a critical ``item`` alarm reaches the drift topic, as a worker's monitor sends it when a bot hammers an
item (``tests/unit/test_poisoned_stream.py`` shows the monitor raising it); every window the learner decides
on from then on is refused with the alarm as the reason, and no version reaches the updates topic.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from ops.replay import file_messages, produce
from streams import records
from tests.conftest import DATA, wait_for
from tests.integration.test_learning_worker import learner_env, learner_status, published_updates

pytestmark = pytest.mark.kafka


def quiet(worker, produced: int) -> dict:
    """The learner's status once the worker accepted ``produced`` interactions and the learner stood still 3 s."""
    seen: list = []

    def settled():
        accepted = sum(c.get("accepted", 0) + c.get("duplicates", 0) for name, c in worker.counts().items()
                       if name.endswith("interactions"))
        status = learner_status(worker)
        idle = accepted >= produced and status.get("pending_events") == 0 and status.get("unacked_events", 1) == 0
        seen.append(status.get("steps") if idle else None)
        return status if len(seen) >= 4 and len(set(seen[-4:])) == 1 and seen[-1] is not None else None
    return wait_for(settled, timeout_s=240, interval_s=1.0,
                    message=lambda: f"a quiet learner: {learner_status(worker)}")


async def send_alarm(settings, alarm: records.DriftAlarm) -> None:
    producer = AIOKafkaProducer(**settings.aiokafka_options(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("ops.drift"), records.encode(alarm), key=alarm.detector.encode())
    finally:
        await producer.stop()


def test_a_critical_item_mix_alarm_holds_publishing(kafka_settings, worker_factory, monkeypatch):
    learner_env(monkeypatch, tiny="1", batch_size="400", batch_within_s="1", window_baskets="5")
    messages = file_messages(DATA, kafka_settings, limit=8000)
    first, rest = messages[:5000], messages[5000:]
    worker = worker_factory()
    asyncio.run(produce(first, kafka_settings))
    wait_for(lambda: learner_status(worker).get("n_published", 0) >= 1, timeout_s=240, interval_s=2.0,
             message=lambda: f"a first published version: {learner_status(worker)}")
    before = quiet(worker, sum(m.kind != "item" for m in first))
    assert before["held"] is None
    published = len(published_updates(kafka_settings))

    asyncio.run(send_alarm(kafka_settings, records.DriftAlarm(detector="page_hinkley", signal="item", value=0.4,
                                                              window=61, severity="critical", ts=time.time())))
    asyncio.run(produce(rest, kafka_settings))
    after = quiet(worker, sum(m.kind != "item" for m in messages))
    assert after["held"].startswith("critical drift alarm on item (page_hinkley, 61 baskets)")
    assert after["refused"] > before["refused"] and after["last_decision"].startswith("held: critical drift alarm")
    assert after["n_published"] == before["n_published"] and after["current_version"] == before["current_version"]
    assert len(published_updates(kafka_settings)) == published
