"""Serving state: scores equal the learner's model, shipped item vectors, catalogue growth, atomic swaps."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from learner import artifacts
from learner.model import Example, RankingModel
from learner.rich_features import FEATURE_NAMES
from learner.trainer import MicroBatchTrainer, TrainerConfig
from serving.history import LiveBehaviour
from serving.new_items import NO_SLATE
from serving.state import BASE_VERSION, StateBuilder, StateHolder
from streams.records import Interaction, Item

N_FEATURES = len(FEATURE_NAMES)

KEY = b"serving-test-key"
COLOURS = "red blue green pink white black".split()
THINGS = "heart mug lamp bag card candle holder".split()
TITLES = [f"{c.upper()} {t.upper()}" for c in COLOURS for t in THINGS]  # 42 items
T0 = 1_300_000_000.0


def make_live(seed: int = 0, users: int = 30, baskets: int = 5, catalogue: int = len(TITLES)) -> LiveBehaviour:
    """A small shop: a catalogue and shoppers whose baskets mix a favourite item with related ones."""
    live = LiveBehaviour()
    for i, title in enumerate(TITLES[:catalogue]):
        live.learn_item(Item(item_id=f"I{i:03d}", title=title))
    rng = np.random.default_rng(seed)
    events = []
    for u in range(users):
        favourite = int(rng.integers(catalogue))
        for b in range(baskets):
            ts = T0 + 86_400 * (b * users + u)
            items = {favourite, int(rng.integers(catalogue)), (favourite + 1) % catalogue}
            events += [(ts, f"u{u}", item) for item in sorted(items)]
    for n, (ts, user, item) in enumerate(sorted(events)):
        live.learn_interaction(Interaction(f"e{n}", user, f"I{item:03d}", "purchase", ts, session_id=f"s{ts}{user}"))
    live.features.flush()
    return live


@pytest.fixture(scope="module")
def builder(base):
    return StateBuilder(base)


@pytest.fixture(scope="module")
def live():
    return make_live()


def trained_model(base, texts, steps: int = 3) -> RankingModel:
    """A model whose LoRA and head moved away from version 0."""
    model = RankingModel(base)
    model.set_catalogue(texts)
    trainer = MicroBatchTrainer(model, TrainerConfig(lora_lr=1e-2, head_lr=0.05, max_encoded_items=8))
    rng = np.random.default_rng(0)
    n = len(texts)
    for _ in range(steps):
        batch = [Example(history=tuple(rng.choice(n, 3)), positive=int(rng.integers(n)),
                         negatives=tuple(rng.choice(n, 4)), features=rng.random((5, N_FEATURES))) for _ in range(8)]
        trainer.train_step(batch)
    model.refresh_item_vectors()
    return model


@pytest.fixture(scope="module")
def adapter_dir(base, live, tmp_path_factory):
    model = trained_model(base, list(live.snapshot().texts))
    return artifacts.save_adapter(model, tmp_path_factory.mktemp("adapters"), "v1", parent="v0",
                                  with_item_vectors=True)


def test_state_scores_equal_the_learner_model(builder, live, base, adapter_dir):
    snapshot = live.snapshot()
    features = live.features.matrix("u3", np.arange(len(snapshot)))
    history = list(live.features.history("u3"))
    for adapter in (None, artifacts._read_dir(adapter_dir)):
        state = builder.build(adapter, snapshot)
        model = artifacts.load_scorer(base, adapter, list(snapshot.texts))
        expected = model.score(history, list(range(len(snapshot))), features)
        scores, _ = state.score_all(state.usable_history(history), features)
        assert torch.allclose(scores, expected, atol=1e-5)
    assert state.version == "v1" and builder.build(None, snapshot).version == BASE_VERSION


def test_shipped_item_vectors_skip_encoding_and_round_trip(builder, live, adapter_dir, tmp_path):
    update = artifacts.make_update(adapter_dir, KEY)
    content = artifacts.verify(update, KEY, builder.base.fingerprint, model=builder.reference)
    assert content.item_vectors is not None and len(content.item_texts) == len(live.snapshot())
    restored = artifacts.unpack(update.payload, tmp_path / "v1")
    assert artifacts.pack(restored) == update.payload  # idempotent replay of the topic still works

    shipped = builder.build(content, live.snapshot())
    assert shipped.source._encoder is None  # noqa: SLF001 - nothing was encoded
    no_vectors = artifacts.Unpacked(content.manifest, content.adapter_config, content.model_config,
                                    content.adapter, content.head)
    encoded = builder.build(no_vectors, live.snapshot())
    assert torch.allclose(shipped.item_vectors, encoded.item_vectors, atol=1e-3)  # shipped as float16

    renamed = make_live(catalogue=len(TITLES))
    renamed.learn_item(Item(item_id="I000", title="GOLD STAR GARLAND"))
    partial = builder.build(content, renamed.snapshot())  # only the retitled item needs encoding
    assert torch.allclose(partial.item_vectors[1:], shipped.item_vectors[1:])
    assert torch.allclose(partial.item_vectors[0], shipped.source.encode(["GOLD STAR GARLAND"])[0], atol=1e-5)


def test_a_head_only_update_keeps_the_item_vectors_without_encoding(builder, live, adapter_dir):
    content = artifacts._read_dir(adapter_dir)  # noqa: SLF001
    no_vectors = artifacts.Unpacked(content.manifest, content.adapter_config, content.model_config,
                                    content.adapter, content.head)
    first = builder.build(no_vectors, live.snapshot())
    new_head = {name: tensor + 0.1 for name, tensor in content.head.items()}
    same_text = artifacts.Unpacked(dataclasses.replace(content.manifest, version="v2"), content.adapter_config,
                                   content.model_config, content.adapter, new_head)
    second = builder.build(same_text, live.snapshot(), first)
    assert second.version == "v2" and torch.equal(second.item_vectors, first.item_vectors)
    assert second.source._encoder is first.source._encoder  # noqa: SLF001 - shared, not rebuilt

    other_text = artifacts.Unpacked(dataclasses.replace(content.manifest, version="v3"), content.adapter_config,
                                    content.model_config, {n: t * 0.5 for n, t in content.adapter.items()},
                                    content.head)
    third = builder.build(other_text, live.snapshot(), second)
    assert not torch.allclose(third.item_vectors, second.item_vectors)  # new LoRA weights: encoded again
    assert builder.build(None, live.snapshot(), third).source.text_key != third.source.text_key


def test_extend_encodes_only_new_and_retitled_items(builder):
    small = make_live(catalogue=30)
    state = builder.build(None, small.snapshot())
    small.learn_item(Item(item_id="I005", title="SILVER BELL"))
    for i in range(30, 35):
        small.learn_item(Item(item_id=f"I{i:03d}", title=TITLES[i]))
    extended = builder.extend(state, small.snapshot())
    fresh = builder.build(None, small.snapshot())
    assert extended.n_items == 35 and extended.version == state.version
    assert torch.allclose(extended.item_vectors, fresh.item_vectors, atol=1e-5)
    assert state.n_items == 30  # the old state is untouched: requests holding it keep working


def constant_state(builder, live, value: float):
    """A state whose every score is ``value``: which state a request used is visible in its scores."""
    state = builder.build(None, live.snapshot())
    with torch.no_grad():
        state.head.linear.weight.zero_()
        state.head.log_text_scale.fill_(float("-inf"))
        state.head.mlp[2].bias.fill_(value)
    return state


def test_swap_is_atomic_and_requests_keep_their_state(builder, live):
    states = [constant_state(builder, live, float(v)) for v in range(4)]
    holder = StateHolder()
    holder.swap(states[0])
    features = live.features.matrix("u1", np.arange(len(live.snapshot())))
    history = list(live.features.history("u1"))
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            state = holder.current
            value = states.index(state)
            for _ in range(3):  # a swap between these calls must not change what this request sees
                scores, _ = state.score_all(state.usable_history(history), features)
                if not torch.all(scores == value):
                    errors.append(f"state {value} scored {scores[:3].tolist()}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    swaps = [holder.swap(states[i % 4]) for i in range(1, 200)]
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert all(s.previous is states[(i) % 4] for i, s in enumerate(swaps))
    assert max(s.apply_ms for s in swaps) < 50


@pytest.mark.parametrize("seed", range(4))
def test_top_k_is_exactly_the_top_of_the_full_ranking(builder, live, seed):
    state = builder.build(None, live.snapshot())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a head far from version 0: the MLP matters
        for param in state.head.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if seed else 0.0))
    features = live.features.matrix("u7", np.arange(state.n_items))
    history = state.usable_history(live.features.history("u7"))
    recommendable = np.random.default_rng(seed).random(state.n_items) > 0.2
    scores, cosine = state.score_all(history, features)
    masked = torch.where(torch.from_numpy(recommendable), scores, -torch.inf)
    expected = torch.topk(masked, 10)
    top, top_scores, top_cosine = state.top_k(history, features, recommendable, 10, NO_SLATE)  # the model's list
    assert top.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(top_scores, expected.values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top_cosine, cosine[top].numpy(), atol=1e-6)
    assert len(state.top_k(history, features, recommendable, 1000, NO_SLATE)[0]) == int(recommendable.sum())
