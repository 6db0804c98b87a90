"""The deduplication window against the real broker: a replay inside it is a duplicate, the ids leave the table
(tombstones on its changelog) once it has passed, and the same events are then accepted as new."""

from __future__ import annotations

import asyncio
import time

import pytest

from ops.kafka_io import read_messages
from ops.replay import file_messages, produce
from streams.app import faust_app_id
from streams.settings import WorkerSettings
from tests.conftest import DATA, wait_for

pytestmark = pytest.mark.kafka

WINDOW_S = 4.0


def test_ids_are_forgotten_after_the_window_and_their_changelog_entries_deleted(kafka_settings, worker_factory,
                                                                                monkeypatch):
    monkeypatch.setenv("RECLOOP_LEARNER", "off")
    monkeypatch.setenv("RECLOOP_WORKER_DEDUP_WINDOW_S", str(WINDOW_S))
    monkeypatch.setenv("RECLOOP_WORKER_DEDUP_PURGE_EVERY_S", "0.5")
    messages = [m for m in file_messages(DATA, kafka_settings, limit=600) if m.kind != "item"]
    first, later = messages[:200], messages[200:]
    worker = worker_factory()
    source = kafka_settings.topic("interactions")

    def counts() -> dict:
        return worker.counts().get(source, {})

    asyncio.run(produce(first, kafka_settings))
    wait_for(lambda: counts().get("accepted") == 200, timeout_s=60, message="200 accepted")
    asyncio.run(produce(first, kafka_settings))  # the same events again, inside the window
    wait_for(lambda: counts().get("duplicates") == 200, timeout_s=60, message="the replay seen as duplicates")

    time.sleep(WINDOW_S + 1)
    for i in range(0, len(later), 50):  # new messages on every partition let each partition's purge run
        asyncio.run(produce(later[i:i + 50], kafka_settings))
        if counts().get("dedup_forgotten", 0) >= 200:
            break
        time.sleep(0.6)
    stats = wait_for(lambda: (c := counts()).get("dedup_forgotten", 0) >= 200 and c, timeout_s=30,
                     message="the first 200 ids forgotten")
    assert stats["duplicates"] == 200  # nothing was forgotten too early

    app_id = faust_app_id(kafka_settings, WorkerSettings(app_id=worker.app_id))

    def tombstones() -> set:
        changelog = asyncio.run(read_messages(kafka_settings, f"{app_id}-seen-interactions-changelog"))
        return {key for key, value in changelog if value is None}

    # tombstones (compaction removes these ids from the changelog) reach it when Faust's changelog producer
    # flushes, a moment after the table forgot them (a CI run read 140 of 200 at once)
    wait_for(lambda: len(tombstones()) >= 200, timeout_s=30, message="200 tombstones on the changelog")

    accepted_before = counts()["accepted"]
    asyncio.run(produce(first, kafka_settings))  # after the window: new again
    wait_for(lambda: counts()["accepted"] == accepted_before + 200, timeout_s=60,
             message="the first 200 accepted again after the window")
