"""Learning inside ``recloop worker`` against the real broker: replayed history in, verified adapters out."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch

from learner import artifacts
from learner.service import GATE_METRIC
from ops.kafka_io import read_messages as read_topic  # other tests import it from here
from ops.processes import get_json
from ops.replay import file_messages, produce
from streams import records
from tests.conftest import DATA, wait_for

KEY = "integration-adapter-key"
log = logging.getLogger(__name__)


def published_updates(settings) -> list[records.AdapterUpdate]:
    messages = asyncio.run(read_topic(settings, settings.topic("model-updates")))
    assert all(key == b"adapter" for key, _ in messages)
    return [records.decode(records.AdapterUpdate, value) for _, value in messages]


def learner_env(monkeypatch, **values: str) -> None:
    """The worker subprocess inherits this test's environment (``recloop_env`` copies it)."""
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY", KEY)
    monkeypatch.delenv("RECLOOP_LEARNER", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(f"RECLOOP_LEARNER_{name.upper()}", value)


def learner_status(worker) -> dict:
    return get_json(f"http://127.0.0.1:{worker.port}/learner/") or {}


def replay_and_collect(kafka_settings, worker, messages, *, timeout_s: float
                       ) -> tuple[list[records.AdapterUpdate], dict]:
    # The catalogue first, as a shop has it before its shoppers arrive: produced together, the two topics reach
    # the learner in whatever order the worker's agents interleave them, and baskets of items not catalogued yet
    # cannot be held out (one CI run held out 7 baskets of 5,600 messages and published one version).
    items = [m for m in messages if m.kind == "item"]
    asyncio.run(produce(items, kafka_settings))
    wait_for(lambda: worker.counts().get(kafka_settings.topic("catalog"), {}).get("accepted", 0) >= len(items),
             timeout_s=120, message=f"the worker to accept {len(items)} catalogue items")
    asyncio.run(produce([m for m in messages if m.kind != "item"], kafka_settings))
    updates = wait_for(lambda: u if len(u := published_updates(kafka_settings)) >= 2 else None,
                       timeout_s=timeout_s, interval_s=2.0,
                       message=lambda: f"two published adapters; learner status {learner_status(worker)}")
    status = wait_for(lambda: (s := learner_status(worker)).get("n_published", 0) >= 2 and s, timeout_s=30,
                      message="the worker's /learner/ page to count the adapters")
    counts = worker.counts().get(kafka_settings.topic("interactions"), {})
    expected = sum(1 for m in messages if m.kind != "item")
    assert counts.get("accepted") == expected  # ingest kept up while the learner trained
    assert worker.alive
    return updates, status


def check_chain(updates: list[records.AdapterUpdate], fingerprint: str) -> None:
    parent = None
    for update in updates:
        content = artifacts.verify(update, KEY, fingerprint)  # sha256, signature, base fingerprint
        assert content.manifest.version == update.version and update.parent == parent
        assert update.metrics["window_examples"] >= 1
        parent = update.version
    with pytest.raises(artifacts.AdapterRejected, match="bad signature"):
        artifacts.verify(updates[0], "another-key", fingerprint)


@pytest.mark.kafka
@pytest.mark.slow
def test_worker_learns_from_replayed_history_and_publishes_verified_adapters(kafka_settings, worker_factory,
                                                                             monkeypatch):
    from learner.encoder import tiny_bert
    from ops.adapters import rollback

    # the catalogue reaches the learner after much of the history (separate topics): few baskets can be held out
    learner_env(monkeypatch, tiny="1", batch_size="400", batch_within_s="1", window_baskets="5")
    messages = file_messages(DATA, kafka_settings, limit=8000)
    first, rest = messages[:-2400], messages[-2400:]
    worker = worker_factory()
    updates, status = replay_and_collect(kafka_settings, worker, first, timeout_s=300)
    check_chain(updates, tiny_bert(seed=0).fingerprint)
    assert status["items"] > 0 and status["trained"] > 0
    local = kafka_settings.home / "adapters" / updates[0].version
    assert artifacts.pack(local) == updates[0].payload  # what was published is what was fsynced
    snapshots = [records.decode(records.MetricSnapshot, value) for _, value in
                 asyncio.run(read_topic(kafka_settings, kafka_settings.topic("ops.metrics")))]
    gate = [s for s in snapshots if s.name == GATE_METRIC]
    assert len(gate) >= len(updates) and {s.labels["decision"] for s in gate} <= {"publish", "refuse"}

    # An operator rolls back to the first adapter: same weights, a new version on top of the current one ...
    back = rollback(kafka_settings, updates[0].version, KEY.encode())
    on_topic = [u.version for u in published_updates(kafka_settings)]
    assert back.version.endswith(f"-rollback-{updates[0].version}") and back.version in on_topic
    assert back.parent in on_topic[:on_topic.index(back.version)]  # the adapter serving when it was published
    old, new = (artifacts.verify(u, KEY, tiny_bert(seed=0).fingerprint) for u in (updates[0], back))
    assert old.adapter.keys() == new.adapter.keys()
    assert all(torch.equal(old.adapter[k], new.adapter[k]) for k in old.adapter)
    # ... and the learner continues from it instead of undoing it with its next update.
    asyncio.run(produce(rest, kafka_settings))
    wait_for(lambda: learner_status(worker).get("adopted") == back.version, timeout_s=120,
             message=f"the learner to adopt {back.version}")
    later = wait_for(lambda: [u for u in published_updates(kafka_settings) if u.parent == back.version],
                     timeout_s=120, message=f"an update whose parent is {back.version}")
    artifacts.verify(later[0], KEY, tiny_bert(seed=0).fingerprint)


@pytest.mark.kafka
@pytest.mark.model
@pytest.mark.slow
def test_worker_learns_with_the_real_minilm_on_cpu(kafka_settings, worker_factory, monkeypatch):
    from learner.encoder import load_base

    learner_env(monkeypatch, tiny="0", device="cpu", batch_size="300", batch_within_s="1", window_baskets="6",
                text_every_windows="3")
    worker = worker_factory()
    started = time.monotonic()
    updates, status = replay_and_collect(kafka_settings, worker, file_messages(DATA, kafka_settings, limit=12000),
                                         timeout_s=300)
    check_chain(updates, load_base().fingerprint)
    log.info("MiniLM on CPU: 2 adapters %.0fs after the replay started; first %.1fs after the learner started",
             time.monotonic() - started, status["first_published_after_s"])
