"""The worker's recovery seeks its stream partitions to their committed offsets before it resumes them (faust#596).

The Faust app is real (built by :func:`streams.app.create_app`, not started); its consumer and fetcher are small
fakes that record the order of the calls, which is the whole point: a stream partition resumed before the seek
can hand its agent a batch fetched at the old position, and messages are lost
(``tests/integration/test_learner_restart.py`` is the broker-backed test of the outcome).
"""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP

from streams.app import create_app
from streams.faust_recovery import SeekFirstRecovery
from streams.settings import KafkaSettings, WorkerSettings


class RecordingConsumer:
    def __init__(self, assignment: set[TP]) -> None:
        self._assignment, self.calls = assignment, []

    def assignment(self) -> set[TP]:
        return self._assignment

    async def perform_seek(self) -> None:
        self.calls.append("seek")

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", frozenset(tps)))

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


class Fetcher:
    async def maybe_start(self) -> None:
        return None


@pytest.mark.parametrize("end", ["on_recovery_completed", "_resume_streams"])  # with tables, without (the worker)
def test_stream_partitions_are_sought_before_they_resume(tmp_path, end):
    r = create_app(KafkaSettings(home=tmp_path), WorkerSettings(app_id="recovery-order"))
    recovery = r.app.tables.recovery
    assert isinstance(recovery, SeekFirstRecovery)
    impressions = TP(r.kafka.topic("impressions"), 0)  # a stream partition of the worker's Faust agents
    consumer = RecordingConsumer({impressions})
    r.app._consumer, r.app._fetcher = consumer, Fetcher()
    r.app.consumer_generation_id = 3

    async def wait(coro, timeout=None) -> None:  # the service is not started: no stop signal to race with
        await coro

    recovery._wait = wait

    asyncio.run(getattr(recovery, end)(generation_id=3))

    assert consumer.calls == ["seek", ("resume", frozenset({impressions})), "resume_flow"]
    assert recovery.completed.is_set()
