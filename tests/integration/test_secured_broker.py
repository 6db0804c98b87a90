"""recloop against a broker that only speaks SASL_SSL (SCRAM-SHA-512 over TLS), as a managed cluster does.

A second local broker, started in secure mode (:class:`ops.kafka_broker.LocalKafka`, ``secure=True``: keytool's
self-signed certificate, SCRAM users written at format time), on ports of its own. Every client gets its
security settings from the environment only, as an operator would set them: topic creation, the worker (Faust),
the replay, a serving worker. A plaintext client and a wrong password are refused, and the password appears in
no log.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from ops.kafka_broker import LocalKafka, broker_reachable
from ops.processes import ChildProcess, free_port, get_json, recloop_env, wait_json
from ops.replay import file_messages, produce
from ops.topic_admin import create_topics
from tests.conftest import DATA, REPO, wait_for

pytestmark = pytest.mark.kafka

KEY = "secured-broker-test-key"


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    home = tmp_path_factory.mktemp("secured")
    shared = LocalKafka(REPO / ".recloop")
    shared.fetch()  # the jars, once per checkout: the secured broker uses the same ones
    (home / "kafka").mkdir()
    os.symlink(shared.libs, home / "kafka" / "libs")
    port = free_port()
    broker = LocalKafka(home, port=port, controller_port=free_port(), secure=True, heap="384m")
    broker.start(timeout_s=120)
    yield broker
    broker.stop()


def test_every_client_connects_with_sasl_ssl_and_nothing_else_does(secured_broker, tmp_path):
    settings = secured_broker.client_settings(topic_prefix="secured.recloop", partitions=2, home=tmp_path / "home")
    password = settings.sasl_password
    assert password not in repr(settings)

    # Only SASL_SSL with the right password gets in.
    assert not broker_reachable(secured_broker.bootstrap, timeout_s=3)
    wrong = {**settings.security_options(), "sasl_plain_password": "not-the-password"}
    assert not broker_reachable(secured_broker.bootstrap, timeout_s=3, options=wrong)
    assert broker_reachable(secured_broker.bootstrap, timeout_s=10, options=settings.security_options())

    create_topics(settings)
    web_port = free_port()
    worker = ChildProcess(["worker"], recloop_env(settings, RECLOOP_LEARNER="off", RECLOOP_WORKER_APP_ID="secured",
                                                  RECLOOP_WORKER_WEB_PORT=str(web_port)),
                          tmp_path / "worker.log").start()
    serve_port = free_port()
    serving = ChildProcess(["serve", "--tiny", "--port", str(serve_port)],
                           recloop_env(settings, RECLOOP_ADAPTER_KEY=KEY), tmp_path / "serve.log").start()
    try:
        wait_json(f"http://127.0.0.1:{web_port}/counts/", worker, timeout_s=90)
        messages = file_messages(DATA, settings, limit=300)
        interactions = [m for m in messages if m.kind != "item"]
        asyncio.run(produce(messages, settings))  # the replay's producer
        wait_for(lambda: (get_json(f"http://127.0.0.1:{web_port}/counts/") or {}).get(
            settings.topic("interactions"), {}).get("accepted") == len(interactions), timeout_s=90,
            message=f"the worker to accept {len(interactions)} interactions over SASL_SSL")

        wait_json(f"http://127.0.0.1:{serve_port}/healthz", serving, timeout_s=120)
        shopper = interactions[0].key.decode()
        response = httpx.get(f"http://127.0.0.1:{serve_port}/recommend", params={"user_id": shopper, "k": 5},
                             timeout=30)
        assert response.status_code == 200 and response.json()["items"]
        item_id = response.json()["items"][0]["item_id"]  # a product page of a recommended item
        similar = wait_for(lambda: (r := httpx.get(f"http://127.0.0.1:{serve_port}/similar", timeout=30, params={
            "item_id": item_id, "user_id": shopper, "k": 5})).status_code == 200 and r.json(), timeout_s=60,
            message=f"/similar for {item_id}")
        assert similar["personalised"] and len(similar["items"]) == 5
    finally:
        worker.stop()
        serving.stop()
    for log in (tmp_path / "worker.log", tmp_path / "serve.log"):
        assert password not in Path(log).read_text(errors="replace"), f"the SASL password is in {log}"
