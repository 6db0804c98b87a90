"""The explanation bandit, its ranker negatives, and the simulated shop it must learn in."""

from __future__ import annotations

import pytest

from learner.explanation_bandit import IRRELEVANT_WEIGHT, ExplanationBandit, segment_of
from learner.feedback_sim import SimConfig, events_to_ratio, simulate
from learner.rich_features import RichFeatures
from streams.records import EXPLANATION_STYLES, ExplanationFeedback

#: The stated learning speed: within this many feedback events the bandit's helpful rate is, and
#: stays, >= 90 % of the oracle's (measured: median 500, worst 750 over seeds 0..29; docs/operations.md).
EVENTS_TO_90 = 1000


@pytest.mark.parametrize("seed", range(5))
def test_the_bandit_reaches_90_percent_of_the_oracle_within_the_stated_events(seed):
    result = simulate(SimConfig(seed=seed))
    assert result.events_to_90 is not None and result.events_to_90 <= EVENTS_TO_90
    assert result.final_ratio >= 0.9
    assert result.bandit_rate > result.random_rate + 0.2  # far better than showing a random style


def test_the_simulation_is_reproducible_and_its_curve_covers_every_event():
    a, b = simulate(SimConfig(events=1000, seed=7)), simulate(SimConfig(events=1000, seed=7))
    assert a.curve == b.curve and a.events_to_90 == b.events_to_90
    assert [n for n, *_ in a.curve] == [250, 500, 750, 1000]
    assert 0.6 < a.oracle_rate < 0.8


def test_events_to_ratio_needs_every_later_block_to_stay_above():
    curve = [(100, 0.7, 0.7, 0.4), (200, 0.5, 0.7, 0.4), (300, 0.7, 0.7, 0.4)]
    assert events_to_ratio(curve, 0.9) == 300


def test_segments_learn_independently():
    bandit = ExplanationBandit(seed=0)
    best = {"new": "popular", "regular": "history"}
    for _ in range(300):
        for segment, liked in best.items():
            style = bandit.predict_one(segment)
            bandit.learn_one(segment, style, style == liked)
    assert {s: bandit.best(s) for s in best} == best
    assert bandit.rates("new")["popular"] > 0.8


def test_a_discounted_bandit_follows_a_change_of_taste():
    bandit = ExplanationBandit(discount=0.98, seed=0)
    for liked in ("history", "similar_text"):
        for _ in range(400):
            style = bandit.predict_one("regular")
            bandit.learn_one("regular", style, style == liked)
    assert bandit.best("regular") == "similar_text"


def test_choices_respect_the_available_styles_and_unknown_styles_are_ignored():
    bandit = ExplanationBandit(seed=0)
    assert {bandit.predict_one("new", ["co_purchase", "popular"]) for _ in range(50)} <= {"co_purchase", "popular"}
    bandit.learn_one("new", "hand_written", True)
    assert set(bandit.rates("new")) == set(EXPLANATION_STYLES)
    with pytest.raises(ValueError):
        bandit.predict_one("new", ["hand_written"])


def test_seeded_bandits_make_the_same_choices():
    def choices(seed):
        bandit = ExplanationBandit(seed=seed)
        return [bandit.predict_one("occasional") for _ in range(20)]

    assert choices(3) == choices(3)


def test_segments_by_earlier_baskets():
    assert [segment_of(n) for n in (0, 1, 4, 5, 50)] == ["new", "occasional", "occasional", "regular", "regular"]


def feedback(helpful: bool, reason: str | None, item: str = "i1") -> ExplanationFeedback:
    return ExplanationFeedback("e", "u1", "r1", item, "x", "history", helpful, 1.3e9, reason)


def test_only_irrelevant_not_helpful_feedback_dismisses_the_item_for_that_shopper():
    features = RichFeatures()
    verdicts = [feedback(False, "irrelevant", "i1"), feedback(False, " Not Relevant ", "i2"),
                feedback(False, "unclear", "i3"), feedback(False, None, "i4"), feedback(True, "irrelevant", "i5")]
    assert [features.learn_feedback(v) for v in verdicts] == [True, True, False, False, False]
    weights = {item: features.dismissed("u1", features.index.index_of(item)) for item in ("i1", "i2", "i3", "i4", "i5")}
    assert weights == {"i1": IRRELEVANT_WEIGHT, "i2": IRRELEVANT_WEIGHT, "i3": 0.0, "i4": 0.0, "i5": 0.0}
    assert features.dismissed("someone else", features.index.index_of("i1")) == 0.0
