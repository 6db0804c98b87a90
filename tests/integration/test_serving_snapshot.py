"""A serving worker boots from its snapshot plus the tail of the topics, and ranks exactly as one that read the
whole history (issue 13, item 5)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from serving.snapshot import read_snapshot, snapshot_path
from streams.records import Interaction, encode
from tests.integration.test_serving_swap import KEY, produce, shop_messages
from tests.unit.test_serving_state import T0

pytestmark = pytest.mark.kafka


def serve(settings, tmp_path, name: str, **env: str) -> tuple[ChildProcess, str]:
    port = free_port()
    child = ChildProcess(["serve", "--tiny", "--port", str(port)],
                         recloop_env(settings, RECLOOP_ADAPTER_KEY=KEY, **env), tmp_path / f"{name}.log").start()
    return child, f"http://127.0.0.1:{port}"


def lists(url: str) -> dict[str, list[str]]:
    return {user: [item["item_id"] for item in httpx.get(f"{url}/recommend", params={"user_id": user, "k": 10},
                                                         timeout=10).json()["items"]]
            for user in (f"u{n}" for n in range(12))}


def test_a_restart_reads_only_the_tail_and_ranks_as_a_full_read(kafka_settings, tmp_path):
    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    first, url = serve(kafka_settings, tmp_path, "first")
    try:
        health = wait_json(f"{url}/healthz", first, timeout_s=120)
        assert not health["booted_from_snapshot"]
    finally:
        first.stop()  # graceful: the snapshot is written at stop
    path = snapshot_path(kafka_settings.home, kafka_settings.topic_prefix)
    snapshot = read_snapshot(path, kafka_settings.topic_prefix)
    assert snapshot is not None and snapshot.live.counts["interactions"] == health["counts"]["interactions"]
    learned = snapshot.live.counts["interactions"]

    tail = [(kafka_settings.topic("interactions"), f"u{n % 12}".encode(),
             encode(Interaction(f"tail-{n}", f"u{n % 12}", f"I{(5 * n) % 42:03d}", "purchase", T0 + 3600 * (200 + n),
                                session_id=f"tail-{n}"))) for n in range(24)]
    asyncio.run(produce(kafka_settings, tail))

    restarted, url = serve(kafka_settings, tmp_path, "restarted")
    cold, cold_url = serve(kafka_settings, tmp_path, "cold", RECLOOP_SERVE_SNAPSHOT_EVERY_S="0")
    try:
        health = wait_json(f"{url}/healthz", restarted, timeout_s=120)
        cold_health = wait_json(f"{cold_url}/healthz", cold, timeout_s=120)
        assert health["booted_from_snapshot"] and not cold_health["booted_from_snapshot"]
        # every interaction learned exactly once: the snapshot's, then only the tail
        assert health["counts"]["interactions"] == cold_health["counts"]["interactions"] == learned + len(tail)
        assert lists(url) == lists(cold_url)
    finally:
        restarted.stop()
        cold.stop()
