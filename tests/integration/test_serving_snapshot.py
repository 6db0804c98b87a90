"""A serving worker boots from its snapshot plus the tail of the topics, and ranks exactly as one that read the
whole history (issue 13, item 5)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from serving.snapshot import read_snapshot, snapshot_path
from streams.records import Interaction, encode
from tests.conftest import wait_for
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


def test_a_snapshot_of_topics_created_again_since_is_forgotten(kafka_settings, tmp_path):
    """Topics deleted and created again under the same names: the snapshot's positions lie past their ends, so
    the worker forgets the snapshot's state and reads the new topics from the beginning."""
    from ops.topic_admin import admin_client, create_topics, delete_topics

    def ours() -> list[str]:
        admin = admin_client(kafka_settings)
        try:
            return [t for t in admin.list_topics() if t.startswith(kafka_settings.topic_prefix + ".")]
        finally:
            admin.close()

    def recreated() -> bool:
        try:
            return all(r.created for r in create_topics(kafka_settings))
        except Exception:  # still marked for deletion
            return False

    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    first, url = serve(kafka_settings, tmp_path, "first")
    try:
        wait_json(f"{url}/healthz", first, timeout_s=120)
    finally:
        first.stop()
    path = snapshot_path(kafka_settings.home, kafka_settings.topic_prefix)
    kept = path.read_bytes()
    delete_topics(kafka_settings)
    wait_for(lambda: not ours(), timeout_s=60, message="the topics to be deleted")
    wait_for(recreated, timeout_s=60, message="the topics to be created again")
    path.write_bytes(kept)
    fewer = [m for m in shop_messages(kafka_settings) if m[0] == kafka_settings.topic("catalog")]
    asyncio.run(produce(kafka_settings, fewer + [
        (kafka_settings.topic("interactions"), b"u1", encode(Interaction("only", "u1", "I001", "purchase", T0)))]))
    again, url = serve(kafka_settings, tmp_path, "again")
    try:
        health = wait_json(f"{url}/healthz", again, timeout_s=120)
        assert health["booted_from_snapshot"]  # it read the file, then found it was of other topics
        assert health["counts"]["interactions"] == 1 and health["counts"]["items"] == len(fewer)
    finally:
        again.stop()
