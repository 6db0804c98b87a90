"""The ranking model: version 0 is the strongest feature, serving and training score alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from learner.encoder import encode_texts
from learner.model import Example, ModelConfig, RankingModel, collate, recency_weights

PAIRS = [(c, t) for c in ("red", "white", "blue", "pink") for t in ("heart", "lantern", "mug", "bag", "card")]
TEXTS = [f"{colour} {thing} number {i}" for i, (colour, thing) in enumerate(PAIRS)]
#: The model is generic over its feature columns; three keep these tests readable (the deployed model's
#: columns are learner.rich_features.FEATURE_NAMES, tested through the learner and serving).
CONFIG = ModelConfig(feature_names=("repeat", "knn", "popularity"), secondary_weight=0.05)


@pytest.fixture()
def model(base):
    model = RankingModel(base, CONFIG)
    model.set_catalogue(TEXTS)
    return model


def test_version_zero_scores_the_primary_feature_plus_small_tie_breakers(model):
    features = np.array([[2.0, 0.0, 0.0], [1.0, 3.0, 3.0], [0.0, 0.0, 9.0]], dtype=np.float32)
    cosine = model.item_vectors[[4, 5, 6]] @ model.user_vector([0, 1, 2])
    expected = torch.from_numpy(features[:, 0] + 0.05 * features[:, 1:].sum(1)) + 0.05 * cosine
    assert torch.allclose(model.score([0, 1, 2], [4, 5, 6], features), expected, atol=1e-6)


def test_version_zero_ranks_like_repeat_when_repeat_separates_candidates(model):
    rng = np.random.default_rng(0)
    features = np.column_stack([rng.permutation(10).astype(np.float32), rng.random((10, 2))])
    scores = model.score([3, 7], list(range(10)), features)
    assert torch.equal(torch.argsort(scores, descending=True), torch.from_numpy(np.argsort(-features[:, 0])))


def test_lora_starts_as_the_identity(model, base):
    expected = encode_texts(base.model, base.tokenizer, TEXTS, max_length=model.config.max_length)
    assert torch.allclose(model.item_vectors, expected, atol=1e-6)


def test_serving_score_equals_the_training_forward(model):
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)  # a non-trivial head, MLP included
    rng = np.random.default_rng(1)
    example = Example(history=(1, 2, 3, 1), positive=5, negatives=(6, 7, 8), features=rng.random((4, 3)))
    with torch.no_grad():
        batch_scores = model(model.batch([example]))[0]
    assert torch.allclose(model.score(example.history, example.candidates, example.features), batch_scores, atol=1e-6)


def test_user_vector_weights_recent_items_most(model):
    assert torch.equal(model.user_vector([]), torch.zeros(32))
    newest_last = model.user_vector([0, 10])
    assert float(newest_last @ model.item_vectors[10]) > float(newest_last @ model.item_vectors[0])
    assert torch.allclose(recency_weights(2, 8.0), torch.tensor([0.5 ** (1 / 8), 1.0]))


def test_history_longer_than_max_history_keeps_the_newest(base):
    model = RankingModel(base, dataclasses.replace(CONFIG, max_history=2))
    model.set_catalogue(TEXTS)
    assert torch.allclose(model.user_vector([0, 1, 2, 3]), model.user_vector([2, 3]))


def test_add_items_encodes_only_the_new_ones(base, model):
    grown = RankingModel(base)
    grown.set_catalogue(TEXTS[:5])
    assert grown.add_items(TEXTS[5:]) == range(5, len(TEXTS))
    assert torch.allclose(grown.item_vectors, model.item_vectors, atol=1e-6)


def test_batch_refuses_items_outside_the_catalogue(model):
    example = Example(history=(1,), positive=len(TEXTS), negatives=(), features=np.zeros((1, 3)))
    with pytest.raises(IndexError, match="outside the catalogue"):
        model.batch([example])


def test_example_checks_its_feature_rows():
    with pytest.raises(ValueError, match="features must be"):
        Example(history=(), positive=1, negatives=(2, 3), features=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        Example(history=(), positive=1, negatives=(), features=np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="weight"):
        Example(history=(), positive=1, negatives=(), features=np.zeros((1, 3)), weight=-1.0)


def test_collate_pads_and_masks():
    config = CONFIG
    examples = [
        Example(history=(), positive=1, negatives=(2,), features=np.ones((2, 3))),
        Example(history=(4, 5), positive=6, negatives=(7, 8, 9), features=np.ones((4, 3))),
    ]
    batch = collate(examples, config)
    assert batch.candidates.tolist() == [[1, 2, 0, 0], [6, 7, 8, 9]]
    assert batch.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.history_weight[0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="feature columns"):
        collate([Example(history=(), positive=1, negatives=(), features=np.ones((1, 2)))], config)


def test_models_from_one_base_are_independent(base, model):
    other = RankingModel(base, CONFIG)
    with torch.no_grad():
        next(p for n, p in other.encoder.named_parameters() if "lora_B" in n).add_(1.0)
    other.set_catalogue(TEXTS)
    assert not torch.allclose(other.item_vectors, model.item_vectors)
    assert model.current_base_fingerprint() == other.current_base_fingerprint() == base.fingerprint


def test_config_round_trips_and_names_incompatibilities():
    config = ModelConfig(feature_names=("repeat", "knn"))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert CONFIG.incompatibilities(config) == [
        "feature_names: ('repeat', 'knn', 'popularity') != ('repeat', 'knn')"
    ]
