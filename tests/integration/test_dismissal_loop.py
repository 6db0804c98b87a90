"""Explanation feedback reaches the ranker, through the real loop: serving ─► feedback topic ─► worker ─► learner.

A shopper marks their top recommendation "not helpful: irrelevant" twice through ``POST /feedback``. Serving
learns the verdicts from the feedback topic and the item leaves that shopper's top 10 at once (the served
model weighs the ``dismissed`` column against it) while every other shopper's list under the same version
stays exactly as it was; the worker forwards the verdicts to the learner, which counts them (once each) and
trains them as weighted negatives, and after its next published version the item is still out of the list.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from ops.replay import file_messages, produce
from streams.records import Interaction, decode
from tests.conftest import DATA, wait_for
from tests.integration.test_learning_worker import learner_env, learner_status

pytestmark = [pytest.mark.kafka]


def known_shoppers(messages, n: int) -> list[str]:
    """Shoppers who bought at two moments at least in ``messages``: the learner and serving know them."""
    moments: dict[str, set[float]] = {}
    for message in messages:
        if message.kind == "purchase":
            event = decode(Interaction, message.value)
            moments.setdefault(event.user_id, set()).add(event.ts)
    return sorted(user for user, seen in moments.items() if len(seen) >= 3)[:n]


def lists(url: str, users: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Each shopper's served top 10, with the model version that ranked it."""
    out = {}
    for user in users:
        body = httpx.get(f"{url}/recommend", params={"user_id": user, "k": 10}).json()
        out[user] = (body["model_version"], [item["item_id"] for item in body["items"]])
    return out


def settled_version(url: str, worker, produced: int) -> str:
    """Wait until the worker accepted all ``produced`` interactions, its learner has nothing pending and has not
    moved for a few seconds, and serving runs the learner's newest version."""
    seen: list[tuple] = []

    def settled():
        accepted = sum(c.get("accepted", 0) + c.get("duplicates", 0) for name, c in worker.counts().items()
                       if name.endswith("interactions"))
        status, health = learner_status(worker), httpx.get(f"{url}/healthz").json()
        current = status.get("current_version")
        quiet = accepted >= produced and status.get("pending_events") == 0 and status.get("unacked_events", 1) == 0
        seen.append((current, status.get("steps")) if quiet else None)
        stable = len(seen) >= 4 and len(set(seen[-4:])) == 1 and seen[-1] is not None  # 3 s without a step
        return current if stable and current and health["model_version"] == current else None
    return wait_for(settled, timeout_s=240, interval_s=1.0,
                    message=lambda: f"serving to run the learner's newest version: {learner_status(worker)}")


def test_an_item_marked_irrelevant_twice_leaves_the_shoppers_top10_and_no_other_list_moves(
        kafka_settings, worker_factory, tmp_path, monkeypatch):
    learner_env(monkeypatch, tiny="1", batch_size="400", batch_within_s="0.5", window_baskets="5",
                checkpoint_interval_s="1")
    messages = file_messages(DATA, kafka_settings, limit=5000)
    catalogue = [m for m in messages if m.kind == "item"]
    events = [m for m in messages if m.kind != "item"]
    history, later = events[:3500], events[3500:]
    shoppers = known_shoppers(history, 12)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ChildProcess(["serve", "--tiny", "--port", str(port)], recloop_env(kafka_settings),
                          tmp_path / "serve.log").start()
    try:
        worker = worker_factory()
        asyncio.run(produce(catalogue, kafka_settings))  # the catalogue first, so baskets can be held out
        wait_for(lambda: learner_status(worker).get("items", 0) >= len(catalogue), timeout_s=120,
                 message=lambda: f"the learner to know the catalogue: {learner_status(worker)}")
        asyncio.run(produce(history, kafka_settings))
        wait_json(f"{url}/healthz", server, timeout_s=120)
        version = settled_version(url, worker, len(history))
        assert version != "v0"
        before = lists(url, shoppers)
        assert all(v == version for v, _ in before.values())
        shopper = shoppers[0]
        dismissed = before[shopper][1][0]  # their best-ranked item

        body = httpx.get(f"{url}/recommend", params={"user_id": shopper, "k": 10}).json()
        shown = next(item for item in body["items"] if item["item_id"] == dismissed)
        for _ in range(2):
            answer = httpx.post(f"{url}/feedback", json={
                "user_id": shopper, "rec_id": body["rec_id"], "item_id": dismissed,
                "explanation_id": shown["explanation"]["explanation_id"], "style": shown["explanation"]["style"],
                "helpful": False, "reason": "irrelevant"})
            assert answer.status_code == 202, answer.text

        # serving reads the verdicts from the topic: the item leaves that list, under the same version
        wait_for(lambda: dismissed not in lists(url, [shopper])[shopper][1], timeout_s=60,
                 message=f"{dismissed} to leave {shopper}'s top 10")
        after = lists(url, shoppers)
        assert after[shopper][0] == version
        assert {u: after[u] for u in shoppers if u != shopper} == {u: before[u] for u in shoppers if u != shopper}
        wait_for(lambda: learner_status(worker).get("dismissals") == 2, timeout_s=60,
                 message=lambda: f"the learner to count both verdicts: {learner_status(worker)}")

        # the learner trains on: after its next published version the item stays out of the shopper's list
        asyncio.run(produce(later, kafka_settings))
        newer = settled_version(url, worker, len(history) + len(later))
        assert newer != version
        served, items = lists(url, [shopper])[shopper]
        assert served == newer and dismissed not in items
    finally:
        server.stop()
