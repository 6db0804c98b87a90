"""Online training: the base never moves, steps are reproducible, forgetting is bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.encoder import base_state
from learner.model import Example, ModelConfig, RankingModel
from learner.trainer import MicroBatchTrainer, Reservoir, TrainerConfig

N_ITEMS = 40
TEXTS = [f"{c} {t} {i}" for i, (c, t) in enumerate((c, t) for c in "red blue green pink".split()
                                                     for t in "heart mug lamp bag card tin box jar cup bell".split())]


def examples(n: int, seed: int) -> list[Example]:
    """Shoppers pick the candidate with the highest column 1; columns 0 and 2 are noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.choice(N_ITEMS, 6, replace=False)
        features = rng.random((6, 3)).astype(np.float32)
        order = np.argsort(-features[:, 1])
        out.append(Example(history=tuple(rng.choice(N_ITEMS, 3)), positive=int(items[order[0]]),
                           negatives=tuple(int(i) for i in items[order[1:]]), features=features[order]))
    return out


def make_trainer(base, **overrides) -> MicroBatchTrainer:
    model = RankingModel(base, ModelConfig(feature_names=("noise", "signal", "noise2"), secondary_weight=0.05))
    model.set_catalogue(TEXTS)
    return MicroBatchTrainer(model, TrainerConfig(**{"max_encoded_items": 16, **overrides}))


def test_base_weights_stay_bit_identical_after_many_steps(base):
    trainer = make_trainer(base, lora_lr=1e-2)
    before = {name: t.clone() for name, t in base_state(trainer.model.encoder).items()}
    lora_b = {n: p.detach().clone() for n, p in trainer.model.encoder.named_parameters() if "lora_B" in n}
    for step in range(20):
        trainer.train_step(examples(16, seed=step))
    after = base_state(trainer.model.encoder)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert trainer.model.current_base_fingerprint() == base.fingerprint
    assert all(not torch.equal(p, lora_b[n]) for n, p in trainer.model.encoder.named_parameters() if "lora_B" in n)
    assert all(n.startswith("head.") or "lora_" in n for n in trainer.model.trainable_parameters())


def test_training_is_deterministic_for_a_seed(base):
    runs = []
    for _ in range(2):
        trainer = make_trainer(base, seed=7)
        losses = [trainer.train_step(examples(12, seed=step)).loss for step in range(4)]
        runs.append((losses, trainer.snapshot()))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


def test_steps_learn_the_signal(base):
    trainer = make_trainer(base, head_lr=0.05)
    first = np.mean([trainer.train_step(examples(32, seed=s)).loss for s in range(3)])
    for step in range(3, 25):
        trainer.train_step(examples(32, seed=step))
    last = np.mean([trainer.train_step(examples(32, seed=s)).loss for s in range(100, 103)])
    assert last < first - 0.2


def test_replay_mixes_older_examples_and_memory_is_bounded(base):
    trainer = make_trainer(base, reservoir_size=10, replay_fraction=0.5)
    first = trainer.train_step(examples(8, seed=0))
    assert first.n_replayed == 0 and first.n_examples == 8
    for step in range(1, 5):
        result = trainer.train_step(examples(8, seed=step))
    assert result.n_replayed == 4 and result.n_examples == 12
    assert len(trainer.reservoir) == 10 and trainer.reservoir.seen == 40
    assert result.n_encoded <= 16


def test_anchor_penalty_holds_weights_near_the_accepted_ones(base):
    drift = {}
    for strength in (0.0, 100.0):
        trainer = make_trainer(base, head_lr=0.05, anchor_l2=strength)
        for step in range(10):
            trainer.train_step(examples(16, seed=step))
        drift[strength] = float(trainer.anchor_penalty().detach())
    assert drift[100.0] < 0.5 * drift[0.0]


def test_snapshot_restore_accept_and_rollback(base):
    trainer = make_trainer(base)
    start = trainer.snapshot()
    trainer.train_step(examples(8, seed=0))
    moved = trainer.snapshot()
    assert not all(torch.equal(start[n], moved[n]) for n in start)
    trainer.rollback()  # nothing accepted yet: back to version 0
    assert all(torch.equal(p, start[n]) for n, p in trainer.model.trainable_parameters().items())
    trainer.restore(moved)
    trainer.accept()
    trainer.train_step(examples(8, seed=1))
    trainer.rollback()
    assert all(torch.equal(p, moved[n]) for n, p in trainer.model.trainable_parameters().items())
    with pytest.raises(KeyError):
        trainer.restore({"head.linear.weight": torch.zeros(1, 3)})


def test_a_poisoned_batch_is_skipped_not_learned(base):
    trainer = make_trainer(base)
    before = trainer.snapshot()
    huge = np.full((2, 3), np.finfo(np.float32).max)  # finite, but the scores overflow
    poisoned = [Example(history=(1,), positive=2, negatives=(3,), features=huge)]
    result = trainer.train_step(poisoned)
    assert np.isnan(result.loss) and result.step == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.trainable_parameters().items())


def test_bpr_loss_trains_too(base):
    trainer = make_trainer(base, loss="bpr")
    result = trainer.train_step(examples(8, seed=0))
    assert np.isfinite(result.loss) and result.loss > 0


def test_reservoir_keeps_a_uniform_bounded_sample():
    reservoir = Reservoir(capacity=100, seed=1)
    for i in range(10_000):
        reservoir.offer(i)
    sample = reservoir.sample(100)
    assert len(reservoir) == 100 and len(set(sample)) == 100
    assert 2_000 < np.mean(sample) < 8_000


def test_pair_steps_bring_items_bought_together_closer_and_leave_base_and_head_alone(base):
    """Shoppers of each colour's heart buy that colour's lamp next: after pair steps each heart is nearest its own
    colour's lamp among the four lamps, and the pairs' loss has fallen."""
    trainer = make_trainer(base, lora_lr=1e-2, anchor_l2=0.0)
    model = trainer.model
    frozen_base = {name: t.clone() for name, t in base_state(model.encoder).items()}
    head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    index = {text.rsplit(" ", 1)[0]: i for i, text in enumerate(TEXTS)}
    colours = "red blue green pink".split()
    hearts, lamps = [index[f"{c} heart"] for c in colours], [index[f"{c} lamp"] for c in colours]
    pairs = list(zip(hearts, lamps, strict=True)) + [(index[f"{c} mug"], index[f"{c} bell"]) for c in colours]

    losses = [trainer.pair_step(pairs, temperature=0.05).loss for _ in range(40)]
    assert losses[-1] < losses[0] / 2 and np.isfinite(losses).all()
    model.refresh_item_vectors()
    assert ((model.item_vectors[hearts] @ model.item_vectors[lamps].T).argmax(1) == torch.arange(4)).all()
    assert all(torch.equal(t, frozen_base[name]) for name, t in base_state(model.encoder).items())
    assert all(torch.equal(p, head[n]) for n, p in model.head.named_parameters())
