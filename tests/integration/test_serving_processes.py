"""``recloop serve --processes 2``: two serving processes share one port, each a whole serving worker that
follows the topics and swaps in published versions by itself."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from learner.encoder import tiny_bert
from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from tests.conftest import wait_for
from tests.integration.test_serving_swap import KEY, produce, publish, shop_messages
from tests.unit.test_serving_app import publishable
from tests.unit.test_serving_state import TITLES

pytestmark = pytest.mark.kafka


def test_two_processes_share_the_port_and_each_serves_the_newest_version(kafka_settings, tmp_path):
    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ChildProcess(["serve", "--tiny", "--port", str(port), "--processes", "2"],
                          recloop_env(kafka_settings, RECLOOP_ADAPTER_KEY=KEY), tmp_path / "serve.log").start()
    try:
        wait_json(f"{url}/healthz", server, timeout_s=180)
        ready: dict[int, dict] = {}

        def every_process(check) -> bool:
            """Ask on new connections (the kernel spreads them) until both processes answered ``check``."""
            for _ in range(20):
                try:
                    health = httpx.get(f"{url}/healthz", timeout=5).json()
                except httpx.HTTPError:
                    continue
                if check(health):
                    ready[health["pid"]] = health
            return len(ready) == 2

        wait_for(lambda: every_process(lambda h: h["status"] == "ok" and h["items"] == len(TITLES)),
                 timeout_s=120, message="two serving processes ready")
        ready.clear()
        publish(kafka_settings, publishable(tiny_bert(seed=0), tmp_path, "v1", key=KEY, texts=TITLES))
        wait_for(lambda: every_process(lambda h: h["model_version"] == "v1"), timeout_s=120,
                 message="both processes serving v1")
        for route, params in (("recommend", {"user_id": "u1"}), ("search", {"q": "mug", "user_id": "u1"}),
                              ("similar", {"item_id": "I001"})):
            response = httpx.get(f"{url}/{route}", params={**params, "k": 5}, timeout=10)
            assert response.status_code == 200 and len(response.json()["items"]) == 5, response.text
    finally:
        server.stop()
    assert server.process.returncode is not None
