"""The learner's input without a broker: a small fake stands in for the aiokafka consumer (it hands out the
records it was given, honours pause/resume as aiokafka does and records commits). The broker-backed tests are
``tests/integration/test_learning_worker.py``, ``test_learner_restart.py``, ``test_learner_keeps_up.py`` (slow)
and ``test_workers_share_partitions.py``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from streams.inbox import Inbox
from streams.learner_input import LearnerInput
from streams.settings import KafkaSettings

TP = TopicPartition("w-learner-events", 0)


class FakeConsumer:
    """Hands out ``records`` from its position, ``max_records`` at a time, unless its partition is paused;
    resuming fetches from the position again (what aiokafka does with records it fetched but did not return)."""

    def __init__(self, n: int) -> None:
        self.records = [SimpleNamespace(topic=TP.topic, partition=0, offset=i, key=b"k", value=b"v")
                        for i in range(n)]
        self.position, self._paused, self.commits, self.refuse = 0, set(), [], False

    def assignment(self):
        return {TP}

    def pause(self, *tps):
        self._paused.update(tps)

    def paused(self):
        return set(self._paused)

    def resume(self, *tps):
        self._paused.difference_update(tps)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):
        if TP in self._paused or self.position >= len(self.records):
            return {}
        batch = self.records[self.position:self.position + (max_records or len(self.records))]
        self.position += len(batch)
        return {TP: batch}

    async def commit(self, offsets):
        if self.refuse:
            raise CommitFailedError("rebalanced")
        self.commits.append(offsets[TP])


def learner_input(n: int, high_water: int = 5, max_records: int = 4) -> tuple[LearnerInput, FakeConsumer]:
    inbox = Inbox(high_water=high_water, low_water=1)
    source = LearnerInput(KafkaSettings(), TP.topic, inbox, group_id="w-learner", max_records=max_records)
    source._consumer = FakeConsumer(n)
    return source, source._consumer


def test_a_full_inbox_pauses_the_partition_until_the_trainer_takes_and_nothing_is_skipped():
    async def scenario():
        source, consumer = learner_input(20)
        await source.poll()
        await source.poll()  # 8 records: past high water
        assert source.inbox.paused and len(source.inbox) == 8
        await asyncio.wait_for(source.poll(), 5)  # paused: no fetch, waits for room (1 s at most)
        assert consumer.paused() == {TP} and len(source.inbox) == 8
        taken = await source.inbox.take(7, within=0)  # down to low water: room again
        await source.poll()
        assert not consumer.paused()
        while len(taken) + len(source.inbox) < 20:
            taken += await source.inbox.take(20, within=0)
            await source.poll()
        taken += await source.inbox.take(20, within=0)
        return [record.offset for record in taken], source.inbox.times_paused

    offsets, times_paused = asyncio.run(scenario())
    assert offsets == list(range(20))
    assert times_paused >= 1


def test_commits_move_past_the_last_record_a_checkpoint_holds_and_never_back():
    async def scenario():
        source, consumer = learner_input(10)
        await source.poll()
        records = await source.inbox.take(4, within=0)
        await source.commit(records[:2])
        await source.commit(records)
        await source.commit(records[:1])  # older than what is committed: nothing
        await source.commit([])
        consumer.refuse = True
        await source.commit(records + records)  # refused by the group: logged, not raised
        return consumer.commits

    assert asyncio.run(scenario()) == [2, 4]


def test_a_revoked_partition_leaves_its_waiting_records_to_the_next_owner():
    async def scenario():
        source, _ = learner_input(10, high_water=3)
        await source.poll()
        assert source.inbox.paused
        await source.on_partitions_revoked({TP})
        return len(source.inbox), source.inbox.paused, source.owner

    assert asyncio.run(scenario()) == (0, False, False)


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_fetch_adds_nothing(n):
    async def scenario():
        source, consumer = learner_input(n)
        consumer.position = n
        await source.poll()
        return len(source.inbox)

    assert asyncio.run(scenario()) == 0
