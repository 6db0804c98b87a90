"""Example building: labels by type, the impression join and its window, sampled negatives, test-then-train."""

from __future__ import annotations

import numpy as np
import pytest

from learner.examples import ExampleBuilder, ExampleConfig, ImpressionJoin, NegativeSampler, ShownImpression
from learner.features import BehaviourFeatures
from streams.records import Impression, Interaction, RecommendedItem

T0 = 1_300_000_000.0
MINUTE = 60.0


def event(n: int, user: str, item: str, kind: str = "purchase", ts: float = T0, rec_id: str | None = None,
          session: str | None = None) -> Interaction:
    return Interaction(f"e{n}", user, item, kind, ts, session_id=session, rec_id=rec_id)


def impression(rec_id: str, user: str, items: list[str], ts: float) -> Impression:
    return Impression(rec_id, user, ts, "v1", tuple(RecommendedItem(i, 1.0) for i in items))


def catalogue_history(builder: ExampleBuilder, n_items: int = 30, n_users: int = 20, seed: int = 0) -> float:
    """Some shoppers buy from a catalogue of ``n_items`` (item i0 most popular); returns the next free time."""
    rng = np.random.default_rng(seed)
    events, ts, n = [], T0, 0
    for day in range(5):
        for u in range(n_users):
            ts = T0 + day * 86_400 + u * MINUTE
            for item in {0, *rng.integers(n_items, size=3).tolist()}:
                events.append(event(n, f"u{u}", f"i{item}", ts=ts))
                n += 1
    builder.observe(events)
    return ts + MINUTE


@pytest.fixture
def builder() -> ExampleBuilder:
    return ExampleBuilder(BehaviourFeatures(), ExampleConfig(negatives=6, seed=3))


def test_positive_types_and_weights(builder):
    ts = catalogue_history(builder)
    examples = builder.observe([event(1000, "u1", "i3", "purchase", ts), event(1001, "u2", "i4", "add_to_cart", ts),
                                event(1002, "u3", "i5", "click", ts), event(1003, "u4", "i6", "view", ts),
                                event(1004, "u5", "i7", "return", ts)])
    index = builder.features.index
    assert [(index.code_of(e.positive), e.weight) for e in examples] == [("i3", 1.0), ("i4", 0.5), ("i5", 0.25)]
    assert all(len(e.negatives) == 6 and e.features.shape == (7, 3) for e in examples)


def test_features_are_built_before_the_event_is_learned(builder):
    ts = catalogue_history(builder)
    [first] = builder.observe([event(2000, "new", "i9", ts=ts)])
    assert first.history == () and first.features[0, 0] == 0.0  # nothing known about this shopper yet
    [again] = builder.observe([event(2001, "new", "i9", ts=ts + MINUTE)])
    assert again.history == (builder.features.index.index_of("i9"),)
    assert again.features[0, 0] > 0.0  # the earlier basket is now history: the repeat feature is on
    builder.features.advance_to(ts + 2 * MINUTE)
    after = builder.features.matrix("new", np.array([again.positive]), now=ts + MINUTE)
    assert after[0, 0] > again.features[0, 0]  # ... and it does not yet count the event it labels


def test_negatives_never_include_the_positive_or_the_rest_of_the_basket(builder):
    ts = catalogue_history(builder)
    basket = [event(3000 + k, "u1", f"i{k}", ts=ts, session="inv-1") for k in range(5)]
    examples = builder.observe(basket)
    items = {builder.features.index.index_of(f"i{k}") for k in range(5)}
    assert len(examples) == 5
    for example in examples:
        assert example.positive in items and not items & set(example.negatives)
        assert len(set(example.negatives)) == len(example.negatives) == 6


def test_sampled_negatives_mix_popular_and_uniform_items():
    sampler = NegativeSampler(negatives=10, popular_fraction=0.5, seed=0)
    popular = np.arange(5)  # items 0..4 are the popular pool
    draws = [sampler.sample(1000, popular, exclude={0}) for _ in range(200)]
    from_pool = [sum(1 for i in d if i < 5) for d in draws]
    assert all(0 not in d and len(d) == 10 for d in draws)
    assert all(n >= 4 for n in from_pool)  # 4 of the 4 available popular ones (0 is excluded)
    assert np.mean([sum(1 for i in d if i >= 5) for d in draws]) >= 5.5  # the rest is spread over the catalogue


def test_examples_are_deterministic_for_a_seed():
    def run(seed: int) -> list[tuple]:
        builder = ExampleBuilder(BehaviourFeatures(), ExampleConfig(negatives=6, seed=seed))
        ts = catalogue_history(builder)
        examples = builder.observe([event(4000 + k, f"u{k}", f"i{k + 1}", ts=ts) for k in range(10)])
        return [(e.history, e.positive, e.negatives, e.features.tobytes()) for e in examples]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_history_is_bounded():
    builder = ExampleBuilder(BehaviourFeatures(), ExampleConfig(negatives=3, max_history=4))
    for day in range(10):
        builder.observe([event(day * 10 + k, "u1", f"i{day * 3 + k}", ts=T0 + day * 86_400) for k in range(3)])
    [example] = builder.observe([event(999, "u1", "i0", ts=T0 + 20 * 86_400)])
    assert len(example.history) == 4


def test_impression_join_labels_unclicked_items_as_negatives_within_the_window(builder):
    ts = catalogue_history(builder)
    shown = ["i1", "i2", "i3", "i4"]
    builder.observe_impressions([impression("r1", "u1", shown, ts)])
    snapshot = builder.features.matrix("u1", np.array([builder.features.index.index_of(i) for i in shown]), now=ts)
    # a click on i2 and a purchase of i4, both attributed to r1 within the window: no sampled examples
    assert builder.observe([event(5000, "u1", "i2", "click", ts + MINUTE, rec_id="r1"),
                            event(5001, "u1", "i4", "purchase", ts + 2 * MINUTE, rec_id="r1")]) == []
    # event time moves past shown_at + 30 min: the impression closes
    closed = builder.observe([event(5002, "u9", "i5", "view", ts + 31 * MINUTE)])
    index = builder.features.index
    by_positive = {index.code_of(e.positive): e for e in closed}
    assert set(by_positive) == {"i2", "i4"}
    assert [index.code_of(i) for i in by_positive["i2"].negatives] == ["i1", "i3"]
    assert by_positive["i2"].weight == 0.25 and by_positive["i4"].weight == 1.0
    np.testing.assert_array_equal(by_positive["i2"].features, snapshot[[1, 0, 2]])  # features as shown


def test_a_response_after_the_window_is_not_attributed(builder):
    ts = catalogue_history(builder)
    builder.observe_impressions([impression("r2", "u1", ["i1", "i2"], ts)])
    builder.observe([event(6000, "u9", "i5", "view", ts + 40 * MINUTE)])  # closes r2: nobody responded
    assert builder.join.ignored_impressions == 1
    [late] = builder.observe([event(6001, "u1", "i2", "purchase", ts + 41 * MINUTE, rec_id="r2")])
    assert len(late.negatives) == 6  # sampled from the catalogue instead


def test_a_response_may_arrive_before_its_impression(builder):
    ts = catalogue_history(builder)
    assert builder.observe([event(7000, "u1", "i2", "click", ts, rec_id="r3")]) == []  # waits for r3
    builder.observe_impressions([impression("r3", "u1", ["i1", "i2", "i3"], ts - MINUTE)])
    [joined] = builder.drain()
    assert builder.features.index.code_of(joined.positive) == "i2" and len(joined.negatives) == 2
    # an orphan whose impression never comes falls back to sampled negatives once the window passes
    assert builder.observe([event(7001, "u1", "i3", "click", ts + MINUTE, rec_id="never")]) == []
    [fallback] = builder.observe([event(7002, "u9", "i5", "view", ts + 32 * MINUTE)])
    assert len(fallback.negatives) == 6 and fallback.weight == 0.25


def test_open_impressions_are_bounded():
    join = ImpressionJoin(window_s=1e9, max_open=2)
    features = np.zeros((2, 3), dtype=np.float32)
    for k in range(3):
        join.show(ShownImpression(f"r{k}", "u", float(k), (1, 2), (), features))
        join.respond(f"r{k}", 1, 1.0, ts=float(k), fallback=None)
    assert len(join) == 2
    assert [e.positive for e in join.drain()] == [1, 1]
