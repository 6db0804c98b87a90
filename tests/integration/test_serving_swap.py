"""Serving workers against the real broker: hot-swap under load, refused updates, impressions and feedback."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import httpx
import pytest
import torch
from aiokafka import AIOKafkaProducer
from fastapi.testclient import TestClient

from learner.encoder import tiny_bert
from ops.kafka_io import topic_reader
from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from serving.app import create_app
from serving.settings import ServingSettings
from serving.worker import ServingWorker
from streams.records import AdapterUpdate, ExplanationFeedback, Impression, Interaction, Item, decode, encode
from tests.conftest import wait_for
from tests.unit.test_serving_app import publishable
from tests.unit.test_serving_state import T0, TITLES

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KEY = "integration-serving-key"


def shop_messages(settings) -> list[tuple[str, bytes, bytes]]:
    """A catalogue and a few shoppers' purchases, as the replay tool would put them on the topics."""
    catalog, interactions = settings.topic("catalog"), settings.topic("interactions")
    messages = [(catalog, f"I{i:03d}".encode(), encode(Item(item_id=f"I{i:03d}", title=title)))
                for i, title in enumerate(TITLES)]
    for n in range(120):
        user, ts = f"u{n % 12}", T0 + 3600 * n
        for item in (n % 42, (n * 7) % 42, (n % 12) + 1):
            event = Interaction(f"e{n}-{item}", user, f"I{item:03d}", "purchase", ts, session_id=f"s{n}")
            messages.append((interactions, user.encode(), encode(event)))
    return messages


async def produce(settings, messages) -> None:
    producer = AIOKafkaProducer(**settings.aiokafka_options(), max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def publish(settings, raw: bytes) -> None:
    asyncio.run(produce(settings, [(settings.topic("model-updates"), b"adapter", raw)]))


class Server:
    """``recloop serve --tiny`` in a subprocess, like an operator runs it."""

    def __init__(self, settings, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = recloop_env(settings, RECLOOP_ADAPTER_KEY=KEY, RECLOOP_LOG_LEVEL="INFO")
        self.child = ChildProcess(["serve", "--tiny", "--port", str(self.port)], env,
                                  tmp_path / f"serve-{self.port}.log")

    def health(self) -> dict:
        if not self.child.alive:
            pytest.fail(f"serving worker exited:\n{self.child.log_tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).json()
        except httpx.HTTPError:
            return {}


@pytest.fixture
def servers(kafka_settings, tmp_path):
    started = [Server(kafka_settings, tmp_path) for _ in range(2)]
    yield started
    for server in started:
        server.child.stop()


class Hammer(threading.Thread):
    """Requests /recommend on every server in a loop and remembers every failure and version seen."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: dict[str, list[str]] = {url: [] for url in urls}
        self.requests = 0

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                for n, url in enumerate(self.urls):
                    try:
                        response = client.get(f"{url}/recommend", params={"user_id": f"u{n + self.requests % 12}",
                                                                          "k": 5})
                        if response.status_code != 200 or len(response.json()["items"]) != 5:
                            self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                        else:
                            versions = self.versions[url]
                            version = response.json()["model_version"]
                            if not versions or versions[-1] != version:
                                versions.append(version)
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{url}: {exc!r}")
                    self.requests += 1


def test_two_workers_hot_swap_under_load_and_refuse_bad_updates(kafka_settings, servers, tmp_path):
    torch.set_num_threads(1)
    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    for server in servers:
        server.child.start()
    for server in servers:
        ready = wait_json(f"{server.url}/healthz", server.child, timeout_s=120)
        assert ready["model_version"] == "v0" and ready["items"] == len(TITLES)
    hammer = Hammer([s.url for s in servers])
    hammer.start()
    try:
        base = tiny_bert(seed=0)
        publish(kafka_settings, publishable(base, tmp_path, "v1", key=KEY, texts=TITLES))
        for server in servers:
            wait_for(lambda s=server: s.health().get("model_version") == "v1", timeout_s=60,
                     message=f"{server.url} serving v1")

        good = decode(AdapterUpdate, publishable(base, tmp_path, "v2", key=KEY))
        tampered = bytearray(good.payload)
        tampered[len(tampered) // 2] ^= 0xFF
        bad = [encode(dataclasses.replace(good, payload=bytes(tampered))),  # sha256 no longer matches
               publishable(base, tmp_path, "v3", key="not the deployment's key"),
               publishable(tiny_bert(seed=1), tmp_path, "v4", key=KEY)]  # another base encoder
        for raw in bad:  # one at a time: a newer update would supersede an older one before it is checked
            rejected = servers[0].health().get("rejected_updates", 0)
            publish(kafka_settings, raw)
            for server in servers:
                wait_for(lambda s=server, r=rejected: s.health().get("rejected_updates", 0) > r, timeout_s=60,
                         message=f"{server.url} rejecting an update")
        assert all(server.health()["model_version"] == "v1" for server in servers)
        metrics = httpx.get(f"{servers[0].url}/metrics").text
        for kind in ("sha256", "signature", "base_fingerprint"):
            assert f'recloop_serving_rejected_updates_total{{kind="{kind}"}} 1.0' in metrics

        publish(kafka_settings, encode(good))  # no shipped vectors: the catalogue is re-encoded off to the side
        for server in servers:
            wait_for(lambda s=server: s.health().get("model_version") == "v2", timeout_s=60,
                     message=f"{server.url} serving v2")
        wait_for(lambda: all(v[-1:] == ["v2"] for v in hammer.versions.values()), timeout_s=30,
                 message="requests answered by v2")
    finally:
        hammer.stop.set()
        hammer.join(timeout=30)
    assert not hammer.failures, hammer.failures[:5]
    assert hammer.requests > 50
    for url, versions in hammer.versions.items():
        assert versions == ["v0", "v1", "v2"], (url, versions)
    assert all(server.health()["max_swap_apply_ms"] < 50 for server in servers)


async def read_all(settings, name: str) -> list[bytes]:
    async with topic_reader(settings, settings.topic(name)) as (consumer, ends):
        values: list[bytes] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000)
            values += [m.value for messages in batches.values() for m in messages]
        return values


def test_impressions_and_feedback_reach_their_topics(kafka_settings):
    torch.set_num_threads(1)
    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    worker = ServingWorker(ServingSettings(adapter_key=KEY), tiny_bert(seed=0), kafka_settings)
    with TestClient(create_app(worker)) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout_s=60, message="worker ready")
        assert worker.live.counts["interactions"] == 360 and worker.holder.current.n_items == len(TITLES)
        rec = client.get("/recommend", params={"user_id": "u3", "k": 3}).json()
        item = rec["items"][0]
        verdict = {"user_id": "u3", "rec_id": rec["rec_id"], "item_id": item["item_id"], "helpful": True,
                   "explanation_id": item["explanation"]["explanation_id"], "style": item["explanation"]["style"]}
        assert client.post("/feedback", json=verdict).status_code == 202
        click = {"user_id": "u3", "item_id": item["item_id"], "type": "click", "rec_id": rec["rec_id"]}
        assert client.post("/feedback", json=click).status_code == 202

        impressions = wait_for(lambda: [i for i in map(lambda v: decode(Impression, v),
                                                       asyncio.run(read_all(kafka_settings, "impressions")))
                                        if i.rec_id == rec["rec_id"]], timeout_s=30, message="the impression")
        assert [i.item_id for i in impressions[0].items] == [i["item_id"] for i in rec["items"]]
        feedback = [decode(ExplanationFeedback, v) for v in asyncio.run(read_all(kafka_settings,
                                                                                 "explanation-feedback"))]
        assert [(f.rec_id, f.helpful) for f in feedback] == [(rec["rec_id"], True)]
        # the click comes back through the interactions topic this worker follows
        wait_for(lambda: worker.live.counts["interactions"] == 361, timeout_s=30, message="the click followed")
