"""The publish gate: improvements pass, regressions such as flipped labels are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.gate import PublishGate, WindowMetrics, evaluate, rank_metrics
from learner.model import Example, RankingModel
from learner.trainer import MicroBatchTrainer, TrainerConfig

N_ITEMS = 30
TEXTS = [f"{c} {t}" for c in "red blue green pink ivory".split() for t in "heart mug lamp bag card tin".split()]


def examples(n: int, seed: int, *, flip: bool = False) -> list[Example]:
    """Shoppers pick the candidate with the highest column 1 (lowest if ``flip``); column 0 is noise,
    so version 0, which ranks by column 0, is no better than chance."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.choice(N_ITEMS, 10, replace=False)
        features = rng.random((10, 3)).astype(np.float32)
        order = np.argsort(features[:, 1] if flip else -features[:, 1])
        out.append(Example(history=tuple(rng.choice(N_ITEMS, 2)), positive=int(items[order[0]]),
                           negatives=tuple(int(i) for i in items[order[1:]]), features=features[order]))
    return out


def trained(base, *, flip: bool) -> MicroBatchTrainer:
    model = RankingModel(base)
    model.set_catalogue(TEXTS)
    trainer = MicroBatchTrainer(model, TrainerConfig(head_lr=0.05, max_encoded_items=8))
    for step in range(25):
        trainer.train_step(examples(32, seed=step, flip=flip))
    return trainer


@pytest.fixture(scope="module")
def improved(base) -> MicroBatchTrainer:
    return trained(base, flip=False)


def test_gate_publishes_an_improvement(improved):
    decision = improved.propose(examples(200, seed=999), PublishGate())
    assert decision.publish, decision.reason
    assert decision.candidate.ndcg_at_10 > decision.serving.ndcg_at_10 + 0.1
    assert decision.as_metrics()["window_examples"] == 200.0


def test_gate_refuses_a_model_trained_on_flipped_labels(base):
    trainer = trained(base, flip=True)
    decision = trainer.propose(examples(200, seed=999), PublishGate())
    assert not decision.publish
    assert decision.reason.startswith("ndcg@10 ") and "< serving" in decision.reason
    trainer.rollback()
    assert evaluate(trainer.model, examples(200, seed=999)).ndcg_at_10 == pytest.approx(decision.serving.ndcg_at_10)


def test_propose_leaves_the_current_weights_in_place(improved):
    before = improved.snapshot()
    improved.propose(examples(60, seed=5), PublishGate())
    assert all(torch.equal(p, before[n]) for n, p in improved.model.trainable_parameters().items())


def test_gate_needs_a_large_enough_window():
    decision = PublishGate(min_examples=50).decide(WindowMetrics(0.9, 0.9, 10), WindowMetrics(0.1, 0.1, 10))
    assert not decision.publish and "fewer than 50" in decision.reason


def test_gate_tolerates_small_noise_and_refuses_nan():
    gate = PublishGate(tolerance=0.01, min_examples=1)
    assert gate.decide(WindowMetrics(0.295, 0.7, 100), WindowMetrics(0.30, 0.7, 100)).publish
    assert not gate.decide(WindowMetrics(math.nan, 0.7, 100), WindowMetrics(0.30, 0.7, 100)).publish
    auc_gate = PublishGate(metric="auc", min_examples=1)
    assert not auc_gate.decide(WindowMetrics(0.9, 0.6, 100), WindowMetrics(0.1, 0.7, 100)).publish


def test_rank_metrics_ignore_padded_candidates_and_split_ties():
    scores = torch.tensor([[1.0, 5.0, -math.inf], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    metrics = rank_metrics(scores, mask)
    assert metrics.auc == pytest.approx((0.0 + 0.5) / 2)
    assert metrics.ndcg_at_10 == pytest.approx((1 / math.log2(3) + 1 / math.log2(3)) / 2)
