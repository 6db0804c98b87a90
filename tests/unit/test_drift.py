"""Golden tests of the drift detectors: seeded streams with a shift alarm at exactly these indices.

Each signal gets the stream its detector watches in production, 2,000 values, seeded with 42:
1,000 before the shift and 1,000 after. The same seed without the shift must raise nothing.
A changed index means a changed detector (hyperparameters, river version): update the table in
``docs/operations.md`` together with these numbers.
"""

from __future__ import annotations

import math
import random

import pytest

from learner.drift import DriftMonitor, SignalSpec, Surprise, default_signals
from learner.online_metrics import OnlineMonitor, PrequentialEvaluator
from streams.records import Interaction

N, SHIFT, SEED = 2000, 1000, 42
CATEGORIES = "abcdefgh"
ITEMS = [f"item-{k}" for k in range(200)]
ZIPF = [1 / (k + 1) for k in range(len(ITEMS))]
QUERIES = [f"product type {k}" for k in range(60)]
QUERY_ZIPF = [1 / (k + 1) for k in range(len(QUERIES))]


def value(signal: str, rng: random.Random, i: int, shifted: bool, surprise: Surprise) -> float:
    after = shifted and i >= SHIFT
    if signal == "miss@10":  # top-10 miss rate 40 % -> 60 %
        return float(rng.random() < (0.6 if after else 0.4))
    if signal == "score":  # served top score: N(0, 1) -> N(0.75, 1.3)
        return rng.gauss(0.75, 1.3) if after else rng.gauss(0.0, 1.0)
    if signal == "new_user":  # share of baskets from new shoppers 10 % -> 25 %
        return float(rng.random() < (0.25 if after else 0.1))
    if signal == "new_item":  # share of new items 5 % -> 15 %
        return float(rng.random() < (0.15 if after else 0.05))
    if signal == "price":  # log1p(price), prices 40 % higher
        return math.log1p(rng.lognormvariate(1.0, 0.8) * (1.4 if after else 1.0))
    if signal == "item":  # baskets of 8 Zipf items; then 30 % of baskets are a bot's, one line of the same item
        if after and rng.random() < 0.3:
            return surprise.learn_one("bot-item")
        return sum(surprise.learn_one(item) for item in rng.choices(ITEMS, weights=ZIPF, k=8)) / 8
    if signal == "query":  # Zipf product-type queries; then a campaign's query is 30 % of the searches
        if after and rng.random() < 0.3:
            return surprise.learn_one("advent calendar")
        return surprise.learn_one(rng.choices(QUERIES, weights=QUERY_ZIPF)[0])
    weights = [1 / (k + 1) for k in range(len(CATEGORIES))]  # Zipf category mix, reversed after the shift
    return surprise.learn_one(rng.choices(CATEGORIES, weights=weights[::-1] if after else weights)[0])


def alarms(signal: str, *, shifted: bool, seed: int = SEED) -> list[tuple[int, str]]:
    rng, surprise, monitor = random.Random(seed), Surprise(), DriftMonitor()
    if signal == "item":  # the worker's monitor watches the item mix only after its warm-up baskets
        for item in rng.choices(ITEMS, weights=ZIPF, k=2000):
            surprise.learn_one(item)
    if signal == "query":  # a shop that has been searched before
        for query in rng.choices(QUERIES, weights=QUERY_ZIPF, k=2000):
            surprise.learn_one(query)
    out = []
    for i in range(N):
        raised = monitor.update({signal: value(signal, rng, i, shifted, surprise)}, ts=1.7e9 + i)
        out += [(i, alarm.severity) for alarm in raised]
    return out


#: signal -> (detector, the exact alarms of the shifted stream). Delay = index - 1000.
GOLDEN = {
    "miss@10": ("adwin", [(1183, "warning")]),
    "score": ("kswin", [(1123, "warning")]),
    "new_user": ("page_hinkley", [(1091, "warning")]),
    "new_item": ("page_hinkley", [(1165, "critical")]),
    "price": ("page_hinkley", [(1186, "warning")]),
    "category": ("page_hinkley", [(1096, "warning")]),
    "item": ("page_hinkley", [(1058, "critical")]),
    "query": ("page_hinkley", [(1028, "warning")]),
}


@pytest.mark.parametrize("signal", sorted(GOLDEN))
def test_a_shift_alarms_at_exactly_the_golden_index_and_a_stationary_stream_never(signal):
    detector, expected = GOLDEN[signal]
    assert {s.name: s.detector for s in default_signals()}[signal] == detector
    assert alarms(signal, shifted=True) == expected
    assert alarms(signal, shifted=False) == []


def test_every_default_signal_has_a_golden_test():
    assert {s.name for s in default_signals()} == set(GOLDEN)


def test_an_alarm_says_what_moved_how_much_and_since_when():
    monitor, raised = DriftMonitor(), []
    rng = random.Random(1)
    for i in range(3000):
        raised += monitor.update({"miss@10": float(rng.random() < (0.2 if i < 1500 else 0.9))}, ts=1.7e9 + i)
    [alarm] = raised
    assert (alarm.detector, alarm.signal, alarm.severity) == ("adwin", "miss@10", "critical")
    assert alarm.value > 0.45  # the miss rate since the estimated change (0.2 before, 0.9 after)
    assert 10 <= alarm.window <= 200  # values since the estimated change point
    assert alarm.ts >= 1.7e9 + 1500


def test_a_quality_signal_that_improves_raises_info_not_a_warning():
    monitor, raised = DriftMonitor(), []
    rng = random.Random(3)
    for i in range(3000):
        raised += monitor.update({"miss@10": float(rng.random() < (0.8 if i < 1500 else 0.2))}, ts=1.7e9)
    assert raised and {a.severity for a in raised} == {"info"}


def test_cooldown_suppresses_alarms_right_after_one():
    class Always:
        drift_detected = True

        def update(self, x):
            pass

    monitor = DriftMonitor((SignalSpec("x", "always", Always, cooldown=3),))
    fired = [i for i in range(10) if monitor.update({"x": float(i)}, ts=1.7e9)]
    assert fired == [0, 4, 8]


def test_unknown_signals_and_missing_or_non_finite_values_are_ignored():
    monitor = DriftMonitor()
    assert monitor.update({"nope": 1.0, "price": None, "new_user": math.nan}, ts=1.7e9) == []
    assert monitor.seen("price") == 0 and monitor.seen("new_user") == 0


def test_the_worker_feeds_interaction_signals_once_per_basket():
    """Invoice lines are not independent: one value per (shopper, timestamp) reaches the detectors."""
    monitor = OnlineMonitor(PrequentialEvaluator(), warmup_baskets=0)
    lines = [Interaction(f"e{i}", "u1", f"i{i}", "purchase", 1.3e9, price=2.0) for i in range(5)]
    lines += [Interaction("e9", "u2", "i0", "purchase", 1.3e9 + 60, price=1.0)]
    for line in lines:
        monitor.learn_interaction(line)
    assert monitor.drift.seen("new_item") == 1 and monitor.drift.seen("price") == 1  # u1's basket closed
    monitor.flush()
    assert monitor.drift.seen("new_user") == 2 and monitor.drift.seen("miss@10") == 2


def test_new_user_and_new_item_signals_wait_for_the_warm_up():
    """A monitor starts knowing nobody; its first baskets' "new" shares say nothing about the shop."""
    monitor = OnlineMonitor(PrequentialEvaluator(), warmup_baskets=2)
    for b in range(4):
        monitor.learn_interaction(Interaction(f"e{b}", f"u{b}", "i0", "purchase", 1.3e9 + b, price=1.0))
    monitor.flush()
    assert monitor.drift.seen("new_user") == 2 and monitor.drift.seen("price") == 4


def test_search_impressions_feed_the_query_mix_and_never_the_score_signal():
    from streams.records import Impression, RecommendedItem

    monitor = OnlineMonitor(PrequentialEvaluator(), warmup_baskets=0)
    shown = (RecommendedItem("i1", 3.5),)
    monitor.learn_impression(Impression("r1", "u1", 1.3e9, "v1", shown, source="search", query="Lunch  Bag"))
    monitor.learn_impression(Impression("r2", "u1", 1.3e9, "v1", shown, source="similar", page_item_id="i0"))
    assert monitor.drift.seen("query") == 1 and monitor.drift.seen("score") == 0
    assert monitor.query_surprise.counts == {"lunch bag": 1}
    monitor.learn_impression(Impression("r3", "u1", 1.3e9, "v1", shown))
    assert monitor.drift.seen("score") == 1
