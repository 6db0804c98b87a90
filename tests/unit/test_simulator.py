"""The shopper simulator clicks what the data says the shopper buys, and prefers one explanation style."""

from __future__ import annotations

from collections import Counter

from ops.simulator import DAY, ShopperSimulator, ShopperVisit, visits
from streams.records import ExplanationFeedback, Interaction

T0 = 1_300_000_000.0


def recommendation(items: list[tuple[str, str]]) -> dict:
    return {"rec_id": "r1", "items": [{"item_id": item, "explanation": {"explanation_id": f"x-{item}", "style": style}}
                                      for item, style in items]}


def test_clicks_are_exactly_the_recommended_items_bought_within_the_horizon():
    visit = ShopperVisit("u1", T0, "inv1", ("A",), frozenset({"A", "C"}))
    sim = ShopperSimulator(seed=1, feedback_rate=0.0)
    events = sim.react(visit, recommendation([("A", "history"), ("B", "popular"), ("C", "co_purchase")]))
    assert [(e.type, e.item_id, e.rec_id) for e in events] == [("click", "A", "r1"), ("click", "C", "r1")]
    assert all(isinstance(e, Interaction) for e in events)


def test_feedback_prefers_the_shoppers_own_style():
    sim = ShopperSimulator(seed=3, feedback_rate=1.0)
    helpful = Counter()
    shown = Counter()
    for i in range(400):
        user = f"u{i}"
        visit = ShopperVisit(user, T0 + i, f"inv{i}", ("Z",), frozenset({"Z"}))
        preferred = sim.preferred_style(user)
        other = "popular" if preferred != "popular" else "history"
        for event in sim.react(visit, recommendation([("A", preferred), ("B", other)])):
            assert isinstance(event, ExplanationFeedback)
            kind = "preferred" if event.style == preferred else "other"
            shown[kind] += 1
            helpful[kind] += event.helpful
            if not event.helpful:
                assert event.reason == "irrelevant"  # A and B are not bought
    assert helpful["preferred"] / shown["preferred"] > 0.75 > 0.35 > helpful["other"] / shown["other"]


def test_visits_are_in_time_order_and_look_ahead_only():
    events = [Interaction("e1", "u", "A", "purchase", T0 + DAY), Interaction("e0", "v", "B", "purchase", T0),
              Interaction("e2", "u", "C", "purchase", T0 + 20 * DAY), Interaction("r", "u", "A", "return", T0)]
    result = visits(events, horizon_days=7)
    assert [(v.user_id, v.items, v.future_items) for v in result] == [
        ("v", ("B",), frozenset({"B"})), ("u", ("A",), frozenset({"A"})), ("u", ("C",), frozenset({"C"}))]


def test_a_shopper_calls_irrelevant_only_what_they_never_buy():
    """Unhelpful verdicts on an item the shopper buys at some other time are "unclear", never "irrelevant"."""
    events = [Interaction("e1", "u", "A", "purchase", T0), Interaction("e2", "u", "B", "purchase", T0 + 30 * DAY)]
    first = visits(events, horizon_days=7)[0]
    assert "B" not in first.future_items  # bought, but after the horizon: not clicked now
    sim = ShopperSimulator(seed=0, feedback_rate=1.0)
    reasons = {}
    for seed in range(40):
        sim.seed = seed
        for event in sim.react(first, recommendation([("B", "popular"), ("Z", "popular")])):
            if isinstance(event, ExplanationFeedback) and not event.helpful:
                reasons.setdefault(event.item_id, set()).add(event.reason)
    assert reasons == {"B": {"unclear"}, "Z": {"irrelevant"}}
