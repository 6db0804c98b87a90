"""Online metrics: test-then-train order, ranking metrics, labelled examples, CTR joins, helpfulness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.online_metrics import FeatureScorer, OnlineMonitor, PrequentialEvaluator, expected_rank
from streams.records import (
    ExplanationFeedback,
    Impression,
    Interaction,
    MetricSnapshot,
    RecommendedItem,
    decode,
    encode,
)

T0 = 1.3e9


class MemoryScorer:
    """Scores 1 for every item the shopper bought before, 0 otherwise; logs every call in order."""

    name = "memory"

    def __init__(self, catalogue: list[str]) -> None:
        self.catalogue = catalogue
        self.bought: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str]] = []

    def item_position(self, item_id: str) -> int:
        return self.catalogue.index(item_id) if item_id in self.catalogue else -1

    def score_all(self, user_id: str, now: float) -> np.ndarray:
        self.calls.append(("score", user_id))
        mine = self.bought.get(user_id, set())
        return np.array([1.0 if item in mine else 0.0 for item in self.catalogue])

    def learn_one(self, interaction: Interaction) -> None:
        self.calls.append(("learn", interaction.event_id))
        if interaction.type == "purchase":
            self.bought.setdefault(interaction.user_id, set()).add(interaction.item_id)

    def baskets_before(self, user_id: str) -> int:
        return len(self.bought.get(user_id, ()))


#: Labels of the classification figures over purchases, scored by the model-free baseline.
PURCHASES = (("scorer", "memory"), ("source", "purchases"))


def buy(event_id: str, user: str, item: str, ts: float, **kw) -> Interaction:
    return Interaction(event_id, user, item, kw.pop("type", "purchase"), ts, **kw)


def by_name(snapshots: list[MetricSnapshot]) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in snapshots}


def test_every_purchase_is_scored_before_anything_learns_from_it():
    catalogue = [f"i{k}" for k in range(30)]
    scorer = MemoryScorer(catalogue)
    evaluator = PrequentialEvaluator(scorer)
    first = evaluator.learn_one(buy("e1", "u1", "i3", T0))
    again = evaluator.learn_one(buy("e2", "u1", "i3", T0 + 86400))
    # Had the scorer learned e1 before scoring it, e1 would be a hit too.
    assert not first.hit and first.rank == 14.5  # 30 tied items: the middle
    assert again.hit and again.rank == 0.0
    assert scorer.calls == [("score", "u1"), ("learn", "e1"), ("score", "u1"), ("learn", "e2")]


def test_a_basket_is_scored_once_with_the_state_before_any_of_its_lines():
    scorer = MemoryScorer(["a", "b", "c"])
    evaluator = PrequentialEvaluator(scorer)
    outcomes = [evaluator.learn_one(buy(f"e{i}", "u1", item, T0)) for i, item in enumerate(["a", "a", "b"])]
    assert [c for c in scorer.calls if c[0] == "score"] == [("score", "u1")]
    assert not any(o.hit and o.rank == 0 for o in outcomes)  # the second "a" does not see the first


def test_ranking_metrics_are_rolling_means_over_evaluated_purchases():
    catalogue = [f"i{k}" for k in range(30)]
    scorer = MemoryScorer(catalogue)
    evaluator = PrequentialEvaluator(scorer, window=3)
    evaluator.learn_one(buy("e0", "u1", "i1", T0))  # miss (30 ties: rank 14.5)
    evaluator.learn_one(buy("e1", "u1", "i1", T0 + 1))  # rank 0
    evaluator.learn_one(buy("e2", "u1", "i2", T0 + 2))  # behind i1, tied with 28 others: rank 1 + 14
    evaluator.learn_one(buy("e3", "u1", "nope", T0 + 3))  # not in the catalogue: a miss, RR 0
    metrics = by_name(evaluator.snapshot(1.7e9))
    assert metrics[("baseline.hr_at_10", ())] == pytest.approx(1 / 3)  # window 3: e1, e2, e3
    assert metrics[("baseline.ndcg_at_10", ())] == pytest.approx(1 / 3)
    assert metrics[("baseline.mrr", ())] == pytest.approx((1 + 1 / 16 + 0) / 3)
    assert metrics[("baseline.purchases_evaluated", ())] == 4


def test_expected_rank_counts_half_of_the_ties():
    assert expected_rank(np.array([3.0, 1.0, 3.0, 3.0]), 0) == 1.0
    assert expected_rank(np.array([3.0, 1.0]), 1) == 1.0
    assert expected_rank(np.array([3.0, 1.0]), 5) == 2.0


def test_purchases_give_labelled_examples_for_rolling_auc_and_log_loss():
    catalogue = [f"i{k}" for k in range(50)]
    scorer = MemoryScorer(catalogue)
    evaluator = PrequentialEvaluator(scorer, negatives=3, seed=1)
    for day in range(300):  # each shopper re-buys their own item: a scorer that remembers is perfect
        user = f"u{day % 5}"
        evaluator.learn_one(buy(f"e{day}", user, f"i{day % 5}", T0 + 86400 * day))
    metrics = by_name(evaluator.snapshot(1.7e9))
    assert metrics[("roc_auc", PURCHASES)] > 0.95
    assert metrics[("log_loss", PURCHASES)] < 0.3  # calibrated: well under log(2)


def test_scores_without_information_read_as_chance_not_as_signal():
    """One purchase and its negatives are calibrated with the same state (no order effect)."""

    class NoiseScorer(MemoryScorer):
        def score_all(self, user_id, now):
            return 1.0 + 1e-3 * rng.random(len(self.catalogue))

    rng = np.random.default_rng(0)
    evaluator = PrequentialEvaluator(NoiseScorer([f"i{k}" for k in range(50)]), negatives=1)
    for i in range(2000):
        evaluator.learn_one(buy(f"e{i}", f"u{i}", f"i{i % 50}", T0 + i))
    assert 0.42 < by_name(evaluator.snapshot(1.7e9))[("roc_auc", PURCHASES)] < 0.58


def test_rank_every_evaluates_a_stable_subset_of_baskets():
    evaluator = PrequentialEvaluator(MemoryScorer(["a"]), rank_every=4)
    chosen = [evaluator.is_sampled(f"u{i}", T0) for i in range(400)]
    assert 60 < sum(chosen) < 140
    assert chosen == [PrequentialEvaluator(rank_every=4).is_sampled(f"u{i}", T0) for i in range(400)]


def impression(rec_id: str, ts: float, items=("a", "b", "c")) -> Impression:
    return Impression(rec_id, "u1", ts, "v1", tuple(RecommendedItem(i, 1.0 - k / 10) for k, i in enumerate(items)))


def test_ctr_joins_responses_to_impressions_by_rec_id_within_the_label_window():
    evaluator = PrequentialEvaluator(MemoryScorer(["a", "b", "c"]), label_window_s=600, grace_s=300)
    assert evaluator.show(impression("r1", T0))
    assert not evaluator.show(impression("r1", T0))  # redelivered: counted once
    evaluator.show(impression("r2", T0))
    evaluator.learn_one(buy("c1", "u1", "b", T0 + 60, type="click", rec_id="r1"))
    evaluator.learn_one(buy("c2", "u1", "z", T0 + 60, type="click", rec_id="r2"))  # not shown in r2
    evaluator.learn_one(buy("c3", "u1", "a", T0 + 60, type="view", rec_id="r2"))  # a view is no response
    # A click that arrives before its impression (another topic) waits for it.
    evaluator.learn_one(buy("c4", "u1", "c", T0 + 100, type="add_to_cart", rec_id="r3"))
    evaluator.show(impression("r3", T0 + 90))
    assert evaluator.snapshot(1.7e9)[0].name != "ctr"  # nothing closed yet: no CTR
    evaluator.show(impression("r4", T0 + 850))
    evaluator.learn_one(buy("v1", "u2", "a", T0 + 850, type="view"))  # past r1..r3's windows, within the grace
    assert ("ctr", ()) not in by_name(evaluator.snapshot(1.7e9))
    evaluator.show(impression("r5", T0 + 1000))
    evaluator.learn_one(buy("v2", "u2", "a", T0 + 1000, type="view"))  # past the grace: r1..r3 close
    evaluator.learn_one(buy("c5", "u1", "a", T0 + 1000, type="click", rec_id="r1"))  # too late: r1 is closed
    metrics = by_name(evaluator.snapshot(1.7e9))
    assert metrics[("ctr", ())] == pytest.approx(2 / 3)
    assert metrics[("impressions", ())] == 5 and metrics[("impressions_responded", ())] == 2
    assert metrics[("impressions_late_responses", ())] == 1
    # 9 shown items became labelled examples, scored with what serving showed
    assert ("log_loss", (("scorer", "served"), ("source", "impressions"))) in metrics


def test_ctr_join_survives_one_topic_read_hours_ahead_of_the_other():
    """Each stream keeps its own event time: responses read far ahead of their impressions still join,
    and impressions read far ahead of the responses stay open for them."""
    ahead = PrequentialEvaluator(MemoryScorer(["a", "b", "c"]), label_window_s=600, grace_s=300)
    ahead.learn_one(buy("c1", "u1", "a", T0 + 60, type="click", rec_id="r1"))
    ahead.learn_one(buy("p1", "u2", "b", T0 + 36_000))  # the interaction topic is ten hours further on
    ahead.show(impression("r1", T0))  # joins the waiting click, and closes at once (its window has passed)
    ahead.show(impression("r2", T0 + 10))
    metrics = by_name(ahead.snapshot(1.7e9))
    assert metrics[("impressions_responded", ())] == 1 and metrics[("ctr", ())] == pytest.approx(1 / 2)

    behind = PrequentialEvaluator(MemoryScorer(["a", "b", "c"]), label_window_s=600, grace_s=300)
    behind.show(impression("r1", T0))
    behind.show(impression("r9", T0 + 36_000))  # the impression topic is ten hours further on
    behind.learn_one(buy("c1", "u1", "b", T0 + 60, type="click", rec_id="r1"))
    assert by_name(behind.snapshot(1.7e9))[("impressions_responded", ())] == 1
    # A response whose impression never comes is dropped once the impressions pass it by the grace.
    behind.learn_one(buy("c2", "u1", "b", T0 + 70, type="click", rec_id="lost"))
    behind.show(impression("r10", T0 + 36_500))
    assert "lost" not in behind._early


def test_explanation_helpfulness_is_a_rolling_rate_per_style():
    evaluator = PrequentialEvaluator(MemoryScorer([]), helpful_window=4)
    votes = [("history", True), ("history", False), ("popular", True)] + [("history", True)] * 4
    for i, (style, helpful) in enumerate(votes):
        evaluator.update_feedback(ExplanationFeedback(f"f{i}", "u1", "r1", "a", f"x{i}", style, helpful, T0))
    metrics = by_name(evaluator.snapshot(1.7e9))
    assert metrics[("explanation_helpful_rate", (("style", "history"),))] == 1.0  # last 4 history votes
    assert metrics[("explanation_helpful_rate", (("style", "popular"),))] == 1.0


def test_snapshots_are_valid_records_with_finite_values():
    monitor = OnlineMonitor(PrequentialEvaluator(FeatureScorer()), clock=lambda: 1.7e9)
    for day in range(20):
        monitor.learn_interaction(buy(f"e{day}", f"u{day % 3}", f"i{day % 4}", T0 + 86400 * day, price=1.5))
    monitor.learn_impression(impression("r1", T0))
    monitor.learn_feedback(ExplanationFeedback("f1", "u1", "r1", "a", "x1", "history", True, T0))
    snapshots = monitor.snapshot()
    names = {s.name for s in snapshots}
    assert {"baseline.hr_at_10", "baseline.ndcg_at_10", "baseline.mrr", "roc_auc", "log_loss",
            "explanation_helpful_rate", "explanation_style_rate"} <= names
    for s in snapshots:
        assert math.isfinite(s.value) and s.ts == 1.7e9
        assert decode(MetricSnapshot, encode(s)) == s


def test_feedback_teaches_the_bandit_of_the_shoppers_segment():
    monitor = OnlineMonitor(PrequentialEvaluator(MemoryScorer(["a"])))
    for i in range(30):
        monitor.learn_feedback(ExplanationFeedback(f"f{i}", "new-shopper", "r", "a", "x", "popular", True, T0))
    assert monitor.bandit.best("new") == "popular"
    assert monitor.bandit.segments == ("new",)


def test_the_monitor_reports_served_quality_first_and_the_feature_scorer_only_as_a_baseline():
    monitor = OnlineMonitor(PrequentialEvaluator(FeatureScorer()), clock=lambda: 1.7e9)
    for day in range(6):
        monitor.learn_interaction(buy(f"e{day}", "u1", f"i{day % 2}", T0 + 86400 * day))
    monitor.learn_impression(impression("r1", T0 + 86400 * 6 - 60, items=("i0", "i1")))
    monitor.learn_interaction(buy("next", "u1", "i1", T0 + 86400 * 6))  # u1's next basket …
    monitor.learn_interaction(buy("later", "u2", "i0", T0 + 86400 * 7))  # … complete once event time passes it
    snapshots = monitor.snapshot()
    metrics = by_name(snapshots)
    assert snapshots[0].name == "served.hr_at_10" and snapshots[0].labels == {"model_version": "all"}
    assert metrics[("served.ndcg_at_10", (("model_version", "v1"),))] == pytest.approx(1 / math.log2(3))
    assert ("served.lift_over_repeat", (("model_version", "v1"),)) in metrics
    assert not {s.name for s in snapshots} & {"hr_at_10", "ndcg_at_10", "mrr"}  # no unlabelled model-free figure
    assert {("roc_auc", (("scorer", "feature_baseline"), ("source", "purchases")))} <= set(metrics)


def test_accuracy_precision_recall_and_f1_at_the_calibrated_threshold():
    """The classic metrics of "chosen" at the calibrated 0.5 threshold, per source, beside AUC and log loss."""
    evaluator = PrequentialEvaluator(MemoryScorer(["a"]), window=100)
    for y_true, y_prob in [(True, 0.9), (True, 0.2), (False, 0.7), (False, 0.1), (False, 0.3)]:
        evaluator.update_label("impressions", y_true, y_prob)
    metrics = by_name(evaluator.snapshot(1.7e9))
    labels = (("scorer", "served"), ("source", "impressions"))
    assert metrics[("accuracy", labels)] == pytest.approx(3 / 5)  # right: 0.9, 0.1, 0.3
    assert metrics[("precision", labels)] == pytest.approx(1 / 2)  # predicted chosen: 0.9 (yes), 0.7 (no)
    assert metrics[("recall", labels)] == pytest.approx(1 / 2)  # chosen: 0.9 found, 0.2 missed
    assert metrics[("f1", labels)] == pytest.approx(1 / 2)
