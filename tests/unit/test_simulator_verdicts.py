"""The simulated shoppers' verdicts score the served style, an oracle and a random faithful style on one draw."""

from __future__ import annotations

from ops.bench_feedback import rates
from ops.simulator import SEGMENT_TASTE, ShopperSimulator, ShopperVisit, visits
from streams.records import Interaction

T0 = 1_300_000_000.0


def recommendation(items: list[tuple[str, str, list[str]]]) -> dict:
    return {"rec_id": "r1", "items": [{"item_id": item, "faithful_styles": faithful,
                                       "explanation": {"explanation_id": f"x-{item}", "style": style}}
                                      for item, style, faithful in items]}


def test_segment_taste_follows_the_baskets_before_the_visit():
    events = [Interaction(f"e{n}", "u", "A", "purchase", T0 + 86_400 * n) for n in range(7)]
    sim = ShopperSimulator(preference="segment")
    tastes = [sim.preferred_style(v.user_id, v.baskets_before) for v in visits(events)]
    assert tastes == [SEGMENT_TASTE["new"]] + [SEGMENT_TASTE["occasional"]] * 4 + [SEGMENT_TASTE["regular"]] * 2


def test_the_oracle_shows_the_preferred_style_only_when_it_is_faithful():
    sim = ShopperSimulator(seed=2, feedback_rate=1.0, preference="segment")
    regular = SEGMENT_TASTE["regular"]
    other = next(style for style in ("history", "popular") if style != regular)
    verdicts = []
    for n in range(400):
        visit = ShopperVisit(f"u{n}", T0 + n, f"b{n}", ("Z",), frozenset(), baskets_before=9)
        _, scored = sim.react_scored(visit, recommendation([("A", other, [other, regular]), ("B", other, [other])]))
        verdicts.extend(scored)
    with_choice = [v for v in verdicts if len(v.faithful) == 2]
    without = [v for v in verdicts if len(v.faithful) == 1]
    assert all(v.preferred == regular and v.style == other for v in verdicts)
    assert rates(without)["oracle_rate"] == rates(without)["helpful_rate"] < 0.35  # nothing better was honest
    assert rates(with_choice)["oracle_rate"] > 0.75 > rates(with_choice)["random_rate"] > 0.35 > \
        rates(with_choice)["helpful_rate"]


def test_verdicts_do_not_change_the_feedback_a_shopper_gives():
    sim = ShopperSimulator(seed=5, feedback_rate=0.5)
    visit = ShopperVisit("u1", T0, "b1", ("A",), frozenset({"A"}))
    rec = recommendation([("A", "history", ["history", "popular"]), ("B", "popular", ["popular"])])
    events, verdicts = sim.react_scored(visit, rec)
    assert sim.react(visit, rec) == events
    assert len(verdicts) == sum(1 for e in events if not isinstance(e, Interaction))
