"""Several Faust workers share 6 partitions: one joins and one leaves mid-stream, nothing is lost, one learner trains.

Real broker, three ``recloop worker`` processes of one group (learner on everywhere, tiny encoder) on topics of 6
partitions. Two start; a third of the history is produced; a third worker joins; another third; the first worker
stops (cleanly: it leaves the group); the rest. Then every interaction produced reached the learner's input topic
(the learner's input is what ingest forwards: an event missing there was lost), and the published versions form
one chain with strictly increasing numbers: one learner at a time, the one whose worker owns the learner's
single-partition input; when that partition moves with a rebalance, the next owner continues the chain from the
shared checkpoint and the updates topic.
"""

from __future__ import annotations

import asyncio

import pytest

from ops.kafka_io import read_messages
from ops.replay import file_messages, produce
from ops.topic_admin import create_topics
from streams.learning import open_envelope
from streams.records import Interaction, decode
from tests.conftest import DATA, WorkerProcess, wait_for
from tests.integration.test_learning_worker import learner_env, learner_status, published_updates

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def ready(worker: WorkerProcess) -> bool:
    from ops.processes import get_json

    return (get_json(f"http://127.0.0.1:{worker.port}/ready/") or {}).get("ready") is True


def test_workers_join_and_leave_mid_stream_without_losing_an_event(kafka_settings, tmp_path, monkeypatch):
    learner_env(monkeypatch, tiny="1", batch_size="400", batch_within_s="1", window_baskets="5")
    settings = kafka_settings.model_copy(update={"partitions": 6, "topic_prefix": kafka_settings.topic_prefix + "6"})
    create_topics(settings)
    messages = file_messages(DATA, settings, limit=9000)
    thirds = [messages[:3000], messages[3000:6000], messages[6000:]]
    app_id = "shared-group"
    workers = [WorkerProcess(settings, tmp_path, app_id).start() for _ in range(2)]
    try:
        wait_for(lambda: all(ready(w) for w in workers), timeout_s=120, message="two workers in the group")
        asyncio.run(produce(thirds[0], settings))
        joined = WorkerProcess(settings, tmp_path, app_id).start()  # joins mid-stream
        workers.append(joined)
        asyncio.run(produce(thirds[1], settings))
        wait_for(lambda: ready(joined), timeout_s=120, message="the third worker to take its partitions")
        workers[0].stop()  # leaves mid-stream (a clean stop: its offsets are committed, the group rebalances)
        asyncio.run(produce(thirds[2], settings))
        alive = workers[1:]

        expected = {decode(Interaction, m.value).event_id for m in messages if m.kind != "item"}
        topic = f"{app_id}-{settings.topic_prefix}-learner-events"

        def forwarded() -> set[str]:
            records = [open_envelope(k, v) for k, v in asyncio.run(read_messages(settings, topic))]
            return {r.event_id for r in records if isinstance(r, Interaction)}

        wait_for(lambda: forwarded() >= expected, timeout_s=300, interval_s=3.0,
                 message=lambda: f"every interaction forwarded ({len(expected - forwarded())} missing); "
                                 f"counts {[w.counts() for w in alive]}")
        wait_for(lambda: any((learner_status(w).get("steps") or 0) > 0 for w in alive), timeout_s=120,
                 message="a live worker's learner training")
        statuses = [learner_status(w) for w in alive]
        updates = wait_for(lambda: published_updates(settings), timeout_s=120, message=f"versions: {statuses}")
        numbers = [int(u.version[1:7]) for u in updates]
        assert numbers == sorted(set(numbers)), [u.version for u in updates]  # strictly increasing
        assert [u.parent for u in updates[1:]] == [u.version for u in updates[:-1]], statuses  # one chain
    finally:
        for worker in workers:
            worker.stop()
