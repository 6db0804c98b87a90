"""The baseline recommenders and their features, on tiny synthetic baskets."""

from __future__ import annotations

import numpy as np
import pytest

from learner.baselines import (
    DAY,
    BiasedMFRecommender,
    CoOccurrence,
    ItemKNNRecommender,
    PopularityRecommender,
    RecentPopularity,
    RepeatKNNRecommender,
    RepeatRecommender,
    RepeatScorer,
    ShopperHistory,
    recency_weights,
)
from learner.baskets import Basket


def basket(user: str, day: float, *items: int) -> Basket:
    return Basket(user, day * DAY, tuple(items), f"{user}-{day}")


def random_baskets(n: int, n_items: int, seed: int = 0) -> list[Basket]:
    rng = np.random.default_rng(seed)
    return [basket(f"u{rng.integers(5)}", day, *rng.choice(n_items, size=rng.integers(1, 6), replace=False).tolist())
            for day in range(n)]


ALL_MODELS = [PopularityRecommender, RepeatRecommender, ItemKNNRecommender, RepeatKNNRecommender,
              lambda: BiasedMFRecommender(n_factors=4)]


@pytest.mark.parametrize("make", ALL_MODELS)
def test_every_model_scores_any_candidates_for_any_shopper(make):
    model = make()
    assert isinstance(model.name, str) and model.name
    empty = model.score("nobody", np.arange(3))
    assert empty.shape == (3,) and np.all(np.isfinite(empty))
    model.learn(random_baskets(20, n_items=8))
    for user in ("u0", "nobody"):
        for candidates in (np.arange(8), np.array([7, 2, 5]), np.arange(12), np.zeros(0, dtype=np.int64)):
            scores = model.score(user, candidates)
            assert scores.shape == candidates.shape and np.all(np.isfinite(scores))


@pytest.mark.parametrize("make", ALL_MODELS[:4])
def test_scores_do_not_depend_on_candidate_order_or_subset(make):
    model = make()
    model.learn(random_baskets(30, n_items=10))
    full = model.score("u1", np.arange(10))
    subset = np.array([9, 3, 4, 0])
    np.testing.assert_allclose(model.score("u1", subset), full[subset])


@pytest.mark.parametrize("make", ALL_MODELS[:4])
def test_learning_is_incremental(make):
    """Learning the stream group by group gives the same state as learning it at once."""
    stream = random_baskets(30, n_items=10)
    at_once, one_by_one = make(), make()
    at_once.learn(stream)
    for b in stream:
        one_by_one.learn([b])
    for user in ("u0", "u3"):
        np.testing.assert_allclose(at_once.score(user, np.arange(10)), one_by_one.score(user, np.arange(10)))


def test_recent_popularity_counts_baskets_in_the_window_only():
    pop = RecentPopularity(window_days=30)
    pop.learn([basket("a", 0, 0, 1), basket("b", 0, 1)])
    pop.learn([basket("a", 20, 2)])
    assert pop.scores(np.arange(3)).tolist() == [1, 2, 1]
    pop.learn([basket("c", 31, 2)])  # day 0 has left the window
    assert pop.scores(np.arange(3)).tolist() == [0, 0, 2]
    pop.advance_to(70 * DAY)
    assert pop.scores(np.arange(3)).tolist() == [0, 0, 0]


def test_repeat_prefers_recent_and_frequent_purchases():
    repeat = RepeatScorer(half_life_days=30)
    repeat.learn([basket("a", 0, 0, 1), basket("a", 10, 1), basket("a", 100, 2)])
    scores = repeat.scores("a", np.arange(4))
    assert scores[2] > scores[1] > scores[0] > scores[3] == 0
    assert repeat.knows("a") and not repeat.knows("b")


def test_repeat_weights_halve_every_half_life_and_now_keeps_the_ranking():
    repeat = RepeatScorer(half_life_days=10)
    repeat.learn([basket("a", 0, 0), basket("a", 10, 1)])
    np.testing.assert_allclose(repeat.scores("a", np.arange(2)), [0.5, 1.0])
    np.testing.assert_allclose(repeat.scores("a", np.arange(2), now=20 * DAY), [0.25, 0.5])


def test_shopper_history_keeps_the_last_baskets():
    history = ShopperHistory(max_baskets=2)
    history.learn([basket("a", d, d) for d in range(4)])
    assert history.recent("a") == [(2,), (3,)]


def test_recency_weights_of_no_baskets_are_empty():
    items, weights = recency_weights([])
    assert len(items) == len(weights) == 0


def test_cooccurrence_fast_path_equals_the_similarity_matrix():
    co = CoOccurrence()
    co.learn(random_baskets(200, n_items=30, seed=3))
    items, weights = np.array([3, 7, 11]), np.array([1.0, 0.7, 0.49])
    for candidates in (np.arange(30), np.array([29, 3, 0, 7]), np.arange(35)):
        expected = weights @ co.similarity(items, candidates)
        np.testing.assert_allclose(co.knn_scores(items, weights, candidates), expected, atol=1e-6)


def test_cooccurrence_similarity_is_cosine_symmetric_and_not_self():
    co = CoOccurrence()
    co.learn([basket("a", 0, 0, 1), basket("b", 0, 0, 1), basket("c", 0, 0, 2), basket("d", 0, 1)])
    sims = co.similarity([0, 1, 2], np.arange(3))
    np.testing.assert_allclose(sims, sims.T)
    np.testing.assert_allclose(np.diag(sims), 0.0)
    assert sims[0, 1] == pytest.approx(2 / np.sqrt(3 * 3))
    assert co.similarity([5], np.arange(3)).tolist() == [[0, 0, 0]]  # an item never bought is like nothing


def test_knn_with_neighbours_lets_each_item_vote_for_its_top_k_only():
    co = CoOccurrence()
    co.learn(random_baskets(200, n_items=30, seed=4))
    scores = co.knn_scores(np.array([5]), np.array([1.0]), np.arange(30), neighbours=3)
    assert np.count_nonzero(scores) <= 3
    full = co.knn_scores(np.array([5]), np.array([1.0]), np.arange(30))
    assert set(np.flatnonzero(scores)) <= set(np.argsort(-full)[:3])


def test_item_knn_recommends_what_is_bought_together():
    model = ItemKNNRecommender()
    model.learn([basket(u, 0, 0, 1) for u in "abc"] + [basket("d", 0, 2, 3)])
    model.learn([basket("e", 1, 0)])
    scores = model.score("e", np.arange(4))
    assert scores[1] > 0 and scores[2] == scores[3] == 0 and scores[0] == 0


def test_repeat_knn_puts_the_shoppers_own_items_first():
    model = RepeatKNNRecommender(knn_weight=0.5)
    model.learn([basket(u, 0, 0, 1) for u in "abc"] + [basket("e", 1, 0, 2)])
    scores = model.score("e", np.arange(4))
    assert min(scores[0], scores[2]) > scores[1] > scores[3] == 0


def test_biased_mf_learns_bought_items_above_never_bought_ones():
    model = BiasedMFRecommender(n_factors=4, negatives=2, seed=1)
    for day in range(40):
        model.learn([basket(u, day, 0, 1) for u in "abcd"] + [basket("x", day, 2)])
    scores = model.score("a", np.arange(4))
    assert min(scores[0], scores[1]) > max(scores[2], scores[3])


def test_biased_mf_subsampling_learns_fewer_baskets_deterministically():
    def item_bias_after(fraction: float) -> np.ndarray:
        model = BiasedMFRecommender(n_factors=2, negatives=0, learn_fraction=fraction, seed=7)
        model.learn(random_baskets(50, n_items=6))
        return model.score("u0", np.arange(6))

    np.testing.assert_allclose(item_bias_after(0.3), item_bias_after(0.3))
    assert not np.allclose(item_bias_after(0.3), item_bias_after(1.0))
