"""The new-item stage of serving's ranking (serving.new_items, ServingState.top_k) and the item ages it reads."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from learner.baselines import DAY
from learner.baskets import Basket
from learner.rich_features import FEATURE_NAMES, RichFeatures
from serving.new_items import NO_SLATE, NewItemSlate
from serving.state import CatalogueSnapshot, StateBuilder

N = 42
REPEAT, BOUGHT_BEFORE = FEATURE_NAMES.index("repeat"), FEATURE_NAMES.index("bought_before")
NEW = (20, 21, 22, 23)  # first sold 3 days ago; 23 was bought by the shopper
PROFILE = NewItemSlate(similarity="profile", min_similarity=0.6, by="similarity")


def _unit(dim: int, parts: dict[int, float]) -> torch.Tensor:
    vector = torch.zeros(dim)
    for axis, value in parts.items():
        vector[axis] = value
    return vector / vector.norm()


@pytest.fixture(scope="module")
def state(base):
    """Items 0..9 lead on repeat (the model's top 10); new items 20, 21 are close to item 0 (cosine 0.9, 0.86),
    22 is close to item 1 only (0.7), 23 is the closest to item 0 but the shopper bought it; the rest are far."""
    snapshot = CatalogueSnapshot(tuple(f"ITEM {i}" for i in range(N)), np.ones(N, dtype=bool), 1)
    built = StateBuilder(base).build(None, snapshot)
    dim = built.item_vectors.shape[1]
    vectors = torch.stack([_unit(dim, {6 + i % (dim - 6): 1.0}) for i in range(N)])
    vectors[0], vectors[1] = _unit(dim, {0: 1.0}), _unit(dim, {1: 1.0})
    vectors[20] = _unit(dim, {0: 0.9, 2: math.sqrt(1 - 0.81)})
    vectors[21] = _unit(dim, {0: 0.86, 3: math.sqrt(1 - 0.86**2)})
    vectors[22] = _unit(dim, {0: 0.1, 1: 0.7, 4: math.sqrt(0.5)})
    vectors[23] = _unit(dim, {0: 0.95, 5: math.sqrt(1 - 0.9025)})
    return dataclasses.replace(built, item_vectors=vectors)


def rows(new_in_top: tuple[int, ...] = (), repeat: dict[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and item ages (days since first sale) of the test catalogue."""
    features = np.zeros((N, len(FEATURE_NAMES)), dtype=np.float32)
    features[:12, REPEAT] = np.linspace(2.0, 0.9, 12)
    for item, value in (repeat or {}).items():
        features[item, REPEAT] = value
    features[[0, 1, 23], BOUGHT_BEFORE] = 1.0
    ages = np.full(N, 100.0)
    ages[list(NEW + new_in_top)] = 3.0
    return features, ages


def served(state, inputs, slate=None, history=(0,), k=10) -> list[int]:
    """The served list for feature rows and ages ``inputs`` (ages None: rows only, no new-item stage)."""
    features, ages = inputs
    return state.top_k(list(history), features, np.ones(N, dtype=bool), k, slate, ages=ages)[0].tolist()


def test_the_last_places_go_to_the_new_items_closest_to_the_shopper(state):
    assert served(state, rows(), NO_SLATE) == list(range(10))
    assert served(state, rows(), PROFILE) == [*range(8), 20, 21]
    assert served(state, rows(), dataclasses.replace(PROFILE, slots=1)) == [*range(9), 20]
    assert served(state, rows(), dataclasses.replace(PROFILE, min_similarity=0.88)) == [*range(9), 20]
    assert served(state, rows(), dataclasses.replace(PROFILE, min_similarity=0.95)) == list(range(10))


def test_the_default_slate_two_places_for_new_items_close_to_one_bought(state):
    assert served(state, rows()) == [*range(8), 20, 21]  # cosines 0.9 and 0.86 to item 0
    assert served(state, rows(), history=(1,)) == list(range(10))  # 22 is only 0.7 from item 1
    assert served(state, rows(repeat={21: 0.05})) == [*range(8), 21, 20]  # ranked by the model's score


def test_new_items_the_model_ranks_count_and_keep_their_place(state):
    assert served(state, rows(new_in_top=(9,)), PROFILE) == [*range(8), 9, 20]
    assert served(state, rows(new_in_top=(3, 9)), PROFILE) == list(range(10))


def test_ranked_by_the_model_score_among_the_new_items_that_fit(state):
    by_score = dataclasses.replace(PROFILE, by="score")
    assert served(state, rows(repeat={21: 0.05}), by_score) == [*range(8), 21, 20]
    assert served(state, rows(repeat={21: 0.05}), PROFILE) == [*range(8), 20, 21]


def test_nearest_history_item_similarity(state):
    slate = dataclasses.replace(PROFILE, min_similarity=0.65)
    assert served(state, rows(), slate, history=(0, 1)) == list(range(10))  # no new item is 0.65 from the mean
    nearest = dataclasses.replace(slate, similarity="nearest")
    assert served(state, rows(), nearest, history=(0, 1)) == [*range(8), 20, 21]
    assert served(state, rows(), dataclasses.replace(nearest, min_similarity=0.75), history=(1,)) == list(range(10))
    assert served(state, rows(), dataclasses.replace(nearest, min_similarity=0.65), history=(1,)) == [*range(9), 22]


def test_the_model_list_without_ages_or_history(state):
    assert served(state, (rows()[0], None)) == list(range(10))  # rows without item ages: no stage
    assert served(state, rows(), PROFILE, history=()) == list(range(10))
    assert served(state, rows(), PROFILE, k=3) == [0, 20, 21]


def test_scores_and_cosines_are_the_models_for_the_items_served(state):
    features, ages = rows()
    top, scores, cosine = state.top_k([0], features, np.ones(N, dtype=bool), 10, PROFILE, ages=ages)
    all_scores, all_cosine = state.score_all([0], features)
    np.testing.assert_allclose(scores, all_scores[top].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cosine, all_cosine[top].numpy(), atol=1e-6)
    recommendable = np.ones(N, dtype=bool)
    recommendable[20] = False
    top = state.top_k([0], features, recommendable, 10, PROFILE, ages=ages)[0]
    assert top.tolist() == [*range(9), 21]  # 22 does not fit


def test_slate_settings_are_checked():
    with pytest.raises(ValueError):
        NewItemSlate(by="popularity")
    with pytest.raises(ValueError):
        NewItemSlate(similarity="title")
    with pytest.raises(ValueError):
        NewItemSlate(slots=-1)


def test_rich_features_carry_item_ages_through_checkpoints():
    features = RichFeatures()
    features.learn([Basket("u", 0.0, (0, 1), "a")])
    features.learn([Basket("v", 10 * DAY, (1, 2), "b")])
    ages = features.item_age_days(np.arange(4), now=12 * DAY)
    assert ages.tolist() == [12.0, 12.0, 2.0, 0.0]
    restored = pickle.loads(pickle.dumps(features))
    assert restored.item_age_days(np.arange(4), now=12 * DAY).tolist() == ages.tolist()
    old = {k: v for k, v in features.__getstate__().items() if k != "_first_sold"}  # written before item ages
    legacy = RichFeatures.__new__(RichFeatures)
    legacy.__setstate__(old)
    assert legacy.item_age_days(np.arange(4), now=12 * DAY).tolist() == [math.inf, math.inf, math.inf, 0.0]


def test_the_stage_stays_off_for_a_text_tower_that_cannot_tell_items_apart(state):
    alike = torch.nn.functional.normalize(state.item_vectors * 0.1 + torch.ones_like(state.item_vectors), dim=-1)
    blurred = dataclasses.replace(state, item_vectors=alike)
    assert state.mean_similarity < 0.5 < blurred.mean_similarity
    everyone_fits = NewItemSlate(min_similarity=-1.0)
    assert served(blurred, rows(), everyone_fits) == list(range(10))
    assert served(state, rows(), everyone_fits) != list(range(10))
