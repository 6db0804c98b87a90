"""The learner service without a broker: replayed history in, a chain of signed adapters (or refusals) out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from learner import artifacts
from learner.adapter_store import next_version, stored_adapters
from learner.encoder import tiny_bert
from learner.model import RankingModel
from learner.rich_features import FEATURE_NAMES
from learner.service import GATE_METRIC, LearnerService
from learner.settings import DEMO_KEY, LearnerConfigError, LearnerSettings
from streams.records import Interaction, Item

DATA = Path(__file__).resolve().parents[2] / "data" / "online_retail.parquet"
KEY = b"unit-test-key"


@pytest.fixture(scope="module")
def base():
    return tiny_bert(seed=0)


def settings(**overrides) -> LearnerSettings:
    values = dict(enabled=True, tiny=True, device="cpu", torch_threads=1, adapter_key="unused", demo=False,
                  window_baskets=16, text_every_windows=2, seed=0)
    return LearnerSettings(**{**values, **overrides})


def make_service(base, home: Path, **overrides) -> LearnerService:
    return LearnerService(settings(**overrides), home, key=KEY, base=base)


def batches(items, interactions, size: int = 1000) -> list[list]:
    return [items] + [interactions[i:i + size] for i in range(0, len(interactions), size)]


def test_replayed_history_publishes_a_chain_of_verified_adapters(base, retail, tmp_path):
    service = make_service(base, tmp_path)
    outcomes = [service.process(batch) for batch in batches(*retail)]
    updates = [o.update for o in outcomes if o.update is not None]
    assert len(updates) >= 2, [o.decision.reason for o in outcomes if o.decision]
    parent = None
    for update in updates:
        content = artifacts.verify(update, KEY, base.fingerprint, model=service.model)
        assert content.manifest.parent == parent == update.parent
        assert content.model_config.feature_names == FEATURE_NAMES  # the features serving computes
        assert (tmp_path / "adapters" / update.version / artifacts.ADAPTER_WEIGHTS).is_file()
        parent = update.version
    assert [a.manifest.version for a in stored_adapters(tmp_path)] == [u.version for u in updates]
    assert service.current_version == updates[-1].version
    gate_snapshots = [m for o in outcomes for m in o.metrics if m.name == GATE_METRIC]
    assert len(gate_snapshots) == service.ranker.windows and service.ranker.windows >= 3
    assert service.model.current_base_fingerprint() == base.fingerprint


def test_events_settle_only_once_a_checkpoint_holds_them(base, retail, tmp_path):
    items, interactions = retail
    service = LearnerService(settings(), tmp_path, key=KEY, base=base, state_dir=tmp_path / "state")
    assert service.process(items).settled_through == 0  # learned, but only in memory
    assert service.process(interactions[:500]).settled_through == 0
    assert service.checkpoint(through=len(items) + 499) == 2
    assert service.process(interactions[500:1000]).settled_through == 2  # step 3 is not on disk yet
    assert service.status.checkpoints == 1 and service.status.last_checkpoint_mb > 0
    with pytest.raises(RuntimeError, match="state directory"):
        make_service(base, tmp_path / "elsewhere").checkpoint(through=0)


def top10(service: LearnerService, users: list[str]) -> dict[str, list[int]]:
    """Each shopper's top-10 by the learner's current weights and features (what it would publish)."""
    n = service.model.n_items
    out = {}
    for user in users:
        rows = torch.from_numpy(service.features.matrix(user, np.arange(n)))
        history = [i for i in service.features.history(user) if i < n][-service.model.config.max_history:]
        cosine = service.model.item_vectors[:n] @ service.model.user_vector(history)
        with torch.no_grad():
            scores = service.model.head(rows, cosine)
        out[user] = torch.argsort(-scores, stable=True)[:10].tolist()
    return out


def test_a_restarted_service_continues_exactly_where_its_checkpoint_left_off(base, retail, tmp_path):
    """Kill after a checkpoint (and after some unsaved work), restart from the checkpoint, feed the rest in other
    micro-batches: the state equals an uninterrupted run's — same versions, weights, features, top-10s."""
    items, interactions = retail
    records = [*items, *interactions[:6000]]
    reference = LearnerService(settings(), tmp_path / "a", key=KEY, base=base)
    for i in range(0, len(records), 700):
        reference.process(records[i:i + 700])
    first = LearnerService(settings(), tmp_path / "b", key=KEY, base=base, state_dir=tmp_path / "b" / "state")
    cut = len(items) + 2500
    for i in range(0, cut, 450):
        for update in first.process(records[i:min(i + 450, cut)]).updates:
            first.mark_published(update.version)
    first.checkpoint(through=cut - 1)
    first.process(records[cut:cut + 900])  # learned, never checkpointed: lost with the process
    second = LearnerService(settings(), tmp_path / "b", key=KEY, base=base, state_dir=tmp_path / "b" / "state")
    assert second.status.checkpointed_through == cut - 1 and second.current_version == first.status.published[-1]
    for i in range(cut, len(records), 1300):
        second.process(records[i:i + 1300])
    # the lost work may have saved versions: they are moved aside and their numbers never reused, so ids may
    # differ from the reference's; the chain and the weights may not
    assert len(second.status.published) == len(reference.status.published) >= 3
    assert second.status.examples == reference.status.examples and second.status.trained == reference.status.trained
    for name, p in reference.model.trainable_parameters().items():
        assert torch.allclose(second.model.trainable_parameters()[name], p, atol=1e-6), name
    assert torch.allclose(second.model.item_vectors, reference.model.item_vectors, atol=1e-6)
    users = sorted({e.user_id for e in interactions[:6000]})[:25]
    assert top10(second, users) == top10(reference, users)
    assert [h.user_id for h in second.ranker.window] == [h.user_id for h in reference.ranker.window]


def test_a_checkpoint_of_another_base_is_ignored(base, retail, tmp_path, caplog):
    items, interactions = retail
    first = LearnerService(settings(), tmp_path, key=KEY, base=base, state_dir=tmp_path / "state")
    first.process([*items, *interactions[:800]])
    first.checkpoint(through=10)
    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        other = LearnerService(settings(seed=1), tmp_path, key=KEY, base=tiny_bert(seed=1),
                               state_dir=tmp_path / "state")
    assert other.status.checkpointed_through is None and other.model.n_items == 0
    assert "another base" in caplog.text


def test_a_published_adapter_carries_the_event_time_its_training_reached(base, retail, tmp_path):
    items, interactions = retail
    service = make_service(base, tmp_path, gate_tolerance=1.0)  # publish whatever the window says
    service.process(items)
    updates = [o.update for o in (service.process(interactions[i:i + 200]) for i in range(0, 8000, 200))
               if o.update is not None]
    assert len(updates) >= 3
    marks = [u.metrics.get("trained_through_ts") for u in updates]
    assert marks[0] is None  # version 1 is the untrained head's judgement: it has seen no window
    assert all(marks[i] < marks[i + 1] for i in range(1, len(marks) - 1))


def test_item_vectors_ship_only_with_versions_whose_text_tower_changed(base, retail, tmp_path):
    items, interactions = retail
    service = make_service(base, tmp_path, gate_tolerance=1.0, text_every_windows=3)
    updates = [o.update for o in (service.process(batch) for batch in batches(items, interactions, size=200))
               if o.update is not None]
    assert len(updates) >= 5
    shipped = [artifacts.parse(u.payload).item_vectors is not None for u in updates]
    # the first version ships the base's vectors; after that only the versions after a text-tower window
    assert shipped[0] and shipped[1:4] == [False, False, True], shipped
    content = artifacts.parse(updates[3].payload)  # the vectors are those its own weights give (float16)
    check = RankingModel(base)
    check.set_catalogue(list(content.item_texts[:8]), encode=False)
    artifacts.load_adapter_into(check, content)
    assert torch.allclose(check.item_vectors, content.item_vectors[:8], atol=2e-3)


def test_the_gate_refuses_a_candidate_that_ranks_the_window_worse(base, retail, tmp_path):
    items, interactions = retail
    service = make_service(base, tmp_path)
    service.process(items)
    step = iter(range(0, len(interactions), 100))
    while service.ranker.windows == 0:
        service.process(interactions[next(step):][:100])
    accepted = service.ranker.trainer.snapshot()
    with torch.no_grad():  # sabotage the candidate: it now prefers what the shopper never bought
        service.model.head.linear.weight.mul_(-1.0)
    before = service.status.refused
    outcome = None
    while outcome is None or outcome.decision is None:
        outcome = service.process(interactions[next(step):][:100])
    assert not outcome.decision.publish and outcome.update is None and service.status.refused == before + 1
    assert "< serving" in outcome.decision.reason
    [snapshot] = outcome.metrics
    assert snapshot.name == GATE_METRIC and snapshot.value == 0.0 and snapshot.labels["decision"] == "refuse"
    assert float(snapshot.labels["candidate"]) < float(snapshot.labels["serving"])
    del accepted


def test_a_restarted_service_resumes_from_the_newest_published_adapter(base, retail, tmp_path):
    first = make_service(base, tmp_path)
    for batch in batches(*retail)[:5]:
        if (outcome := first.process(batch)).update is not None:
            first.mark_published(outcome.update.version)  # what the worker does once the broker has it
    assert first.current_version is not None
    published = first.ranker._accepted  # the weights of the last accepted adapter
    second = make_service(base, tmp_path)
    assert second.current_version == first.current_version
    assert all(torch.equal(p, published[n]) for n, p in second.model.trainable_parameters().items())
    assert next_version(tmp_path) == f"v{len(first.status.published) + 1:06d}"


def test_an_adapter_saved_but_never_published_is_not_resumed_from(base, retail, tmp_path):
    first = make_service(base, tmp_path)
    updates = [o.update for batch in batches(*retail) if (o := first.process(batch)).update is not None]
    assert len(updates) >= 2
    for update in updates[:-1]:
        first.mark_published(update.version)
    # the worker died after saving the last adapter, before the broker acknowledged it
    second = make_service(base, tmp_path)
    assert second.current_version == updates[-2].version
    assert [a.manifest.version for a in stored_adapters(tmp_path)] == [u.version for u in updates[:-1]]
    assert (tmp_path / "adapters" / f".unpublished-{updates[-1].version}").is_dir()
    assert next_version(tmp_path) == f"v{len(updates) + 1:06d}"  # version ids are never reused


def test_catalogue_titles_may_arrive_after_the_interactions(base, tmp_path):
    service = make_service(base, tmp_path)
    service.process([Interaction("e1", "u1", "85123A", "purchase", 1.3e9)])
    index = service.features.index.index_of("85123A")
    assert service.model.item_texts[index] == "85123A"
    before = service.model.item_vectors[index].clone()
    service.process([Item("85123A", "WHITE HANGING HEART T-LIGHT HOLDER")])
    assert service.model.item_texts[index] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert not torch.equal(service.model.item_vectors[index], before)  # re-encoded


def test_a_redelivered_event_is_learned_once(base, retail, tmp_path):
    items, interactions = retail
    service = make_service(base, tmp_path)
    service.process(items)
    first = service.process(interactions[:3000])
    assert first.n_examples > 0
    again = service.process(interactions[:3000])
    assert again.n_examples == 0 and service.status.events == len(items) + 6000


def test_a_stop_request_leaves_the_step_unsettled(base, retail, tmp_path):
    items, interactions = retail
    service = make_service(base, tmp_path)
    service.process(items)
    settled = service.process(interactions[:300]).settled_through
    service.request_stop()
    outcome = service.process(interactions[300:600])
    assert outcome.n_trained == 0 and outcome.settled_through == settled


def test_a_missing_signing_key_is_a_start_up_error_unless_demo(caplog):
    with pytest.raises(LearnerConfigError, match="RECLOOP_ADAPTER_KEY"):
        settings(adapter_key=None).signing_key()
    with caplog.at_level(logging.WARNING, logger="learner.settings"):
        assert settings(adapter_key=None, demo=True).signing_key() == DEMO_KEY
    assert "DEMO key" in caplog.text
    assert settings(adapter_key="s3cret").signing_key() == b"s3cret"


def test_the_worker_refuses_to_start_learning_without_a_key(tmp_path):
    from streams.agents import Downstream
    from streams.app import create_app
    from streams.learning import register_learning_agents
    from streams.settings import KafkaSettings, WorkerSettings

    app = create_app(KafkaSettings(topic_prefix="tkeytest.recloop", home=tmp_path), WorkerSettings(app_id="keytest"))
    with pytest.raises(LearnerConfigError):
        register_learning_agents(app, Downstream(), settings(adapter_key=None))


@pytest.mark.parametrize("isolation", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_the_service_runs_in_its_own_executor(isolation, retail, tmp_path):
    from streams.learning import call_service, service_executor

    items, interactions = retail
    executor, stop = service_executor(settings(isolation=isolation), tmp_path, KEY, tmp_path / "state")
    try:
        assert executor.submit(call_service, "status_dict").result(timeout=120)["steps"] == 0
        outcomes = [executor.submit(call_service, "process", batch).result(timeout=120)
                    for batch in batches(items, interactions[:6000])]
        assert outcomes[-1].status["steps"] == len(outcomes) and outcomes[-1].status["trained"] > 0
        assert any(o.update is not None for o in outcomes)
        assert executor.submit(call_service, "checkpoint", 41).result(timeout=120) == len(outcomes)
        assert (tmp_path / "state" / "learner.ckpt").is_file()
    finally:
        stop.set()
        executor.shutdown(wait=True)


def test_settings_read_the_deployment_wide_variables(monkeypatch):
    monkeypatch.setenv("RECLOOP_LEARNER", "off")
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY", "from-env")
    monkeypatch.setenv("RECLOOP_LEARNER_BATCH_SIZE", "32")
    loaded = LearnerSettings()
    assert not loaded.enabled and loaded.signing_key() == b"from-env" and loaded.batch_size == 32


def test_bucketed_encoding_equals_the_plain_item_tower(base):
    from learner.model import ModelConfig, RankingModel
    from learner.streaming_model import StreamingRankingModel

    texts = ["MUG", "WHITE HANGING HEART T-LIGHT HOLDER", "MUG", "SET OF 3 CAKE TINS PANTRY DESIGN", "LANTERN",
             "JUMBO BAG RED RETROSPOT", "PACK OF 72 RETROSPOT CAKE CASES", "CARD"] * 3
    plain = RankingModel(base, ModelConfig(), seed=1)
    bucketed = StreamingRankingModel(base, ModelConfig(), seed=1, bucket_size=4)
    for model in (plain, bucketed):
        model.set_catalogue(texts, encode=False)
    indices = [5, 0, 2, 1, 7, 3, 4, 6, 10, 13, 0]
    expected = plain.encode_items(indices)
    with torch.enable_grad():
        got = bucketed.encode_items(indices)
        got.sum().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got[1], got[2])  # "MUG" twice: one row
    assert all(p.grad is not None for n, p in bucketed.encoder.named_parameters() if "lora_A" in n)


def test_an_adapter_published_elsewhere_is_adopted_and_trained_on(base, retail, tmp_path):
    first = make_service(base, tmp_path / "a")
    updates = [o.update for batch in batches(*retail) if (o := first.process(batch)).update is not None]
    other = make_service(base, tmp_path / "b")
    other.process(retail[0])
    assert other.adopt(updates[0]) and not other.adopt(updates[0])
    assert other.current_version == updates[0].version
    expected = artifacts.parse(updates[0].payload).head
    assert all(torch.equal(other.model.head.state_dict()[k], v) for k, v in expected.items())
    later = [o.update for batch in batches(*retail)[1:] if (o := other.process(batch)).update is not None]
    assert later and later[0].parent == updates[0].version
    for update in later:
        other.mark_published(update.version)  # what the worker does once the broker acknowledged each
    forged = artifacts.make_update(tmp_path / "a" / "adapters" / updates[1].version, b"not-the-key")
    with pytest.raises(artifacts.AdapterRejected, match="bad signature"):
        other.adopt(forged)
    with pytest.raises(artifacts.AdapterRejected, match="not newer"):  # a replayed old record: never a rollback
        other.adopt(updates[0])
    assert other.current_version == later[-1].version


def test_adapter_store_lists_shows_and_copies_a_version_for_rollback(base, retail, tmp_path):
    from ops.adapters import copy_as_new_version, list_adapters, show_adapter

    service = make_service(base, tmp_path)
    for batch in batches(*retail):
        if (outcome := service.process(batch)).update is not None:
            service.mark_published(outcome.update.version)
    rows = list_adapters(tmp_path)
    assert [r["version"] for r in rows] == service.status.published and rows[-1]["current"]
    assert all(r["published"] for r in rows) and rows[1]["parent"] == rows[0]["version"]
    shown = show_adapter(tmp_path, rows[0]["version"])
    assert tuple(shown["model_config"]["feature_names"]) == FEATURE_NAMES and shown["payload_bytes"] > 0
    copied = copy_as_new_version(tmp_path, rows[0]["version"], parent=rows[-1]["version"])
    assert copied.name == f"v{len(rows) + 1:06d}-rollback-{rows[0]['version']}"
    manifest = artifacts.read_manifest(copied)
    assert manifest.parent == rows[-1]["version"] and manifest.base_fingerprint == base.fingerprint
    for name in (artifacts.ADAPTER_WEIGHTS, artifacts.HEAD_WEIGHTS):
        original = tmp_path / "adapters" / rows[0]["version"] / name
        assert (copied / name).read_bytes() == original.read_bytes()
    assert artifacts.verify(artifacts.make_update(copied, KEY), KEY, base.fingerprint).manifest.version == copied.name


def test_a_restarted_learner_knows_which_versions_it_trained(base, retail, tmp_path):
    """After a crash between publishing and checkpointing, the topic's newest update is the learner's own: it is
    retrained from the checkpoint, not adopted; an operator's rollback is still adopted."""
    from ops.adapters import copy_as_new_version

    service = make_service(base, tmp_path, gate_tolerance=1.0)
    updates = [u for batch in batches(*retail)[:4] for u in service.process(batch).updates]
    assert len(updates) >= 2
    for update in updates:
        service.mark_published(update.version)
    rollback = copy_as_new_version(tmp_path, updates[0].version, parent=updates[-1].version)
    restarted = make_service(base, tmp_path)
    assert restarted.trained_versions() == [u.version for u in updates]
    assert rollback.name not in restarted.trained_versions()


def test_a_worker_taking_the_learner_over_loads_the_newer_checkpoint(base, retail, tmp_path):
    """Two workers share the state directory; the one that did not train catches up with the owner's checkpoint."""
    items, interactions = retail
    state = tmp_path / "shared-state"
    standby = LearnerService(settings(), tmp_path / "b", key=KEY, base=base, state_dir=state)  # started first, idle
    owner = LearnerService(settings(), tmp_path / "a", key=KEY, base=base, state_dir=state)
    owner.process([*items, *interactions[:3000]])
    owner.checkpoint(through=len(items) + 2999)
    assert standby.reload_checkpoint() == len(items) + 2999
    assert standby.reload_checkpoint() is None  # nothing newer
    users = sorted({e.user_id for e in interactions[:3000]})[:20]
    assert top10(standby, users) == top10(owner, users) and standby.status.trained == owner.status.trained


def test_a_learner_whose_input_goes_back_returns_to_its_checkpoint(base, retail, tmp_path):
    """The partition left and came back: records learned after the checkpoint are read again, so the state goes
    back to the checkpoint (``rewind``) instead of learning them twice."""
    items, interactions = retail
    state = tmp_path / "state"
    service = LearnerService(settings(), tmp_path / "a", key=KEY, base=base, state_dir=state)
    service.process([*items, *interactions[:2000]])
    through = len(items) + 1999
    service.checkpoint(through=through)
    users = sorted({e.user_id for e in interactions[:2000]})[:20]
    at_checkpoint = top10(service, users)
    service.process(interactions[2000:3500])  # learned, never checkpointed
    assert service.reload_checkpoint() is None  # nothing newer than what it holds
    assert service.reload_checkpoint(rewind=True) == through
    assert top10(service, users) == at_checkpoint
