"""Topic creation and topic-to-topic backfill against the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from ops.kafka_io import topic_reader
from ops.replay import replay
from ops.topic_admin import admin_client, create_topics
from streams.topics import ALL_TOPICS
from tests.conftest import REPO

pytestmark = pytest.mark.kafka


def test_topics_create_is_idempotent_and_configures_compaction(kafka_settings):
    again = create_topics(kafka_settings)  # the fixture already created them once
    assert len(again) == len(ALL_TOPICS) and not any(result.created for result in again)
    admin = admin_client(kafka_settings)
    try:
        names = [kafka_settings.topic(n) for n in ("catalog", "model-updates", "interactions")]
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        topics = described["topic"]  # kafka-python 3.x: {"topic": {name: {config: {"value": …}}}}
        policies = {name: topics[name]["cleanup.policy"]["value"] if "cleanup.policy" in topics[name] else "delete"
                    for name in names}
        assert policies == {names[0]: "compact", names[1]: "compact", names[2]: "delete"}
    finally:
        admin.close()


def events(n: int, start: float) -> list[dict]:
    return [{"event_id": f"e{i}", "user_id": f"u{i % 7}", "item_id": f"i{i % 13}", "type": "purchase",
             "ts": start + 60 * i} for i in range(n)]


def test_replay_cli_and_backfill_of_a_time_range(kafka_settings, tmp_path):
    source = tmp_path / "events.jsonl"
    rows = events(100, 1_300_000_000.0)
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n{broken\n")
    env = {"RECLOOP_KAFKA_BOOTSTRAP": kafka_settings.bootstrap, "RECLOOP_TOPIC_PREFIX": kafka_settings.topic_prefix,
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "replay", str(source), "--quiet"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["produced"] == {"purchase": 100} and summary["skipped"] == {"invalid json line": 1}

    target = kafka_settings.topic("interactions-backfill")
    since, until = rows[20]["ts"], rows[30]["ts"]
    backfill = asyncio.run(replay(f"topic:{kafka_settings.topic('interactions')}", kafka_settings, since=since,
                                  until=until, target=target))
    assert backfill.total_produced == 10

    async def read() -> list[str]:
        async with topic_reader(kafka_settings, target) as (consumer, end):
            values = []
            while len(values) < sum(end.values()):
                for messages in (await consumer.getmany(timeout_ms=1000)).values():
                    values.extend(orjson.loads(m.value)["event_id"] for m in messages)
            return values

    assert sorted(asyncio.run(read())) == sorted(f"e{i}" for i in range(20, 30))
