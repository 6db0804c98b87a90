"""The explanation loop against the real broker: feedback → worker's bandit → signed policy → serving → impressions."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from learner.explanation_bandit import ExplanationBandit
from learner.explanation_policy import make_policy, verify_policy
from ops.kafka_io import topic_reader
from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from streams.records import ExplanationFeedback, ExplanationPolicy, Impression, decode, encode
from tests.conftest import wait_for
from tests.integration.test_serving_swap import produce, shop_messages
from tests.unit.test_serving_state import T0

pytestmark = [pytest.mark.kafka]

KEY = "integration-policy-key"


def read_topic(settings, name: str, record: type) -> list:
    async def read() -> list:
        out = []
        async with topic_reader(settings, settings.topic(name)) as (consumer, ends):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batches = await consumer.getmany(timeout_ms=1000)
                out.extend(decode(record, m.value) for messages in batches.values() for m in messages)
        return out

    return asyncio.run(read())


def feedback(n: int) -> list[ExplanationFeedback]:
    """Shoppers of the test shop rate explanations: "similar_text" helps, the others do not."""
    return [ExplanationFeedback(f"fb{n}-{i}", f"u{i % 12}", f"r{i}", "I001", f"x{i}", style,
                                helpful=style == "similar_text", ts=T0 + 3600 * 130 + i)
            for i, style in enumerate(["similar_text", "history", "popular", "co_purchase"] * n)]


def test_the_worker_publishes_a_policy_that_serving_adopts_and_logs(kafka_settings, worker_factory, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY", KEY)
    monkeypatch.setenv("RECLOOP_LEARNER", "off")
    monkeypatch.setenv("RECLOOP_POLICY_INTERVAL_S", "0.5")
    asyncio.run(produce(kafka_settings, shop_messages(kafka_settings)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ChildProcess(["serve", "--tiny", "--port", str(port)], recloop_env(kafka_settings),
                          tmp_path / "serve.log").start()
    try:
        worker = worker_factory()
        wait_json(f"{url}/healthz", server, timeout_s=120)
        assert httpx.get(f"{url}/healthz").json()["policy_version"] is None

        topic = kafka_settings.topic("explanation-feedback")
        asyncio.run(produce(kafka_settings, [(topic, f.user_id.encode(), encode(f)) for f in feedback(30)]))
        wait_for(lambda: worker.counts().get(topic, {}).get("accepted", 0) >= 120, timeout_s=60,
                 message="the worker accepted the feedback")
        wait_for(lambda: httpx.get(f"{url}/healthz").json()["policy_version"] is not None, timeout_s=60,
                 message="serving adopted a policy")

        # the worker may publish while a batch of the feedback is still being read (its timer runs between
        # batches): the policy of all 120 follows within an interval
        published = wait_for(lambda: (ps := read_topic(kafka_settings, "explanation-policy", ExplanationPolicy))
                             and ps[-1].feedback_events == 120 and ps, timeout_s=30,
                             message="a policy of all 120 feedback events")
        newest = published[-1]
        verify_policy(newest, KEY, current_version=None)
        assert [p.version for p in published] == sorted({p.version for p in published})  # strictly increasing
        # the segment a shopper is in depends on how many of their baskets the worker had seen: sum over segments
        helpful = {s: sum(arms[s][0] for arms in newest.posteriors.values()) for s in newest.styles}
        unhelpful = {s: sum(arms[s][1] for arms in newest.posteriors.values()) for s in newest.styles}
        assert helpful["similar_text"] > helpful["history"] and unhelpful["history"] > unhelpful["similar_text"]
        wait_for(lambda: httpx.get(f"{url}/healthz").json()["policy_version"] == newest.version, timeout_s=30,
                 message="serving adopted the newest policy")

        body = httpx.get(f"{url}/recommend", params={"user_id": "u3", "k": 10}).json()
        assert body["policy_version"] == newest.version
        assert all(item["explanation"]["style"] in item["faithful_styles"] for item in body["items"])
        wait_for(lambda: any(i.rec_id == body["rec_id"] for i in read_topic(kafka_settings, "impressions", Impression)),
                 timeout_s=30, message="the impression was logged")
        logged = next(i for i in read_topic(kafka_settings, "impressions", Impression) if i.rec_id == body["rec_id"])
        assert logged.policy_version == newest.version
        assert [i.explanation["style"] for i in logged.items] == [i["explanation"]["style"] for i in body["items"]]

        # a forged policy with a higher version is refused and counted; the current one keeps serving
        forged = make_policy(ExplanationBandit(), version=newest.version + 10**6, key="not-the-deployment-key",
                             created_at=T0)
        policy_topic = kafka_settings.topic("explanation-policy")
        asyncio.run(produce(kafka_settings, [(policy_topic, b"policy", encode(forged))]))
        wait_for(lambda: httpx.get(f"{url}/healthz").json()["rejected_policies"] >= 1, timeout_s=30,
                 message="serving refused the forged policy")
        assert httpx.get(f"{url}/healthz").json()["policy_version"] == newest.version
    finally:
        server.stop()
