"""Served quality: impressions joined with the shopper's next basket, served vs the repeat baseline."""

from __future__ import annotations

import itertools
import math

import pytest

from learner.ranking_metrics import ndcg_at_k
from learner.served_quality import ServedQuality, score_list
from streams.records import Impression, Interaction, MetricSnapshot, RecommendedItem, decode, encode

DAY = 86_400.0
T0 = 1_291_191_960.0  # 2010-12-01: a replay, far from the wall clock
_ids = itertools.count()


def buy(user: str, item: str, ts: float, type: str = "purchase") -> Interaction:
    return Interaction(f"e{next(_ids)}", user, item, type, ts)


def basket(user: str, items: str, ts: float) -> list[Interaction]:
    return [buy(user, item, ts) for item in items]


def shown(rec_id: str, user: str, ts: float, items: str, version: str = "v1") -> Impression:
    return Impression(rec_id, user, ts, version, tuple(RecommendedItem(i, 1.0 - k / 100) for k, i in enumerate(items)))


def tick(ts: float) -> Interaction:
    """Another shopper's view: moves event time on without buying anything."""
    return buy("someone-else", "Z", ts, type="view")


def figures(q: ServedQuality, version: str = "all") -> dict[str, float]:
    return {s.name.removeprefix("served."): s.value for s in q.snapshot(1.7e9)
            if s.labels.get("model_version") == version}


def feed(q: ServedQuality, events) -> None:
    for event in events:
        if isinstance(event, Impression):
            q.show(event)
        else:
            q.learn_one(event)


def history() -> list[Interaction]:
    """u1 bought A twice and B once; u2 bought C, D: popularity A > B, C, D."""
    return [*basket("u1", "AB", T0), *basket("u1", "A", T0 + DAY), *basket("u2", "CD", T0 + DAY),
            *basket("u3", "A", T0 + DAY)]


def test_an_impression_is_scored_against_the_next_basket_beside_the_repeat_baseline():
    q = ServedQuality()
    feed(q, history())
    feed(q, [shown("r1", "u1", T0 + 3 * DAY, "CBA"), *basket("u1", "BE", T0 + 4 * DAY), tick(T0 + 5 * DAY)])
    v1 = figures(q, "v1")
    served_ndcg = ndcg_at_k([1], 2, 10)  # B at rank 1 of targets {B, E}
    repeat_ndcg = ndcg_at_k([1], 2, 10)  # repeat: A (bought twice), B, then the popular fill
    assert v1["ndcg_at_10"] == pytest.approx(served_ndcg) and v1["repeat_ndcg_at_10"] == pytest.approx(repeat_ndcg)
    assert v1["hr_at_10"] == 1.0 and v1["recall_at_10"] == 0.5
    assert v1["lift_over_repeat"] == pytest.approx(served_ndcg - repeat_ndcg)
    assert v1["followed_share"] == 1.0 and v1["impressions"] == 1 and v1["followed"] == 1
    assert figures(q) == v1  # one version: "all" reads the same


def test_the_repeat_list_is_the_decayed_purchase_count_then_popularity_then_first_seen():
    q = ServedQuality()
    feed(q, [*history(), tick(T0 + 2 * DAY)])
    assert q.repeat_list("u1", T0 + 3 * DAY, 4) == ("A", "B", "C", "D")  # exclude nothing; fill by popularity
    assert q.repeat_list("u1", T0 + 0.5 * DAY, 4) == ("A", "B", "C", "D")  # before the second basket: A, B tie
    assert q.repeat_list("newcomer", T0 + 3 * DAY, 3) == ("A", "B", "C")  # nobody: the popular items
    assert q.repeat_list("u1", T0, 4)[:2] == ("A", "B")  # popularity (A: 3 baskets) before first seen
    assert q.repeat_list("u2", T0 + 3 * DAY, 2) == ("C", "D")  # tied weights: first seen first


def test_a_list_shorter_than_k_is_compared_with_a_repeat_list_as_long_and_a_long_one_is_cut_at_k():
    q = ServedQuality(k=2)
    feed(q, history())
    feed(q, [shown("short", "u1", T0 + 3 * DAY, "B"), shown("long", "u1", T0 + 3 * DAY, "CDB"),
             *basket("u1", "B", T0 + 4 * DAY), tick(T0 + 5 * DAY)])
    f = figures(q)
    assert f["hr_at_2"] == 0.5  # "short" shows B; "long" shows C, D within k=2
    assert f["repeat_hr_at_2"] == 0.5  # repeat ("A",) for "short", ("A", "B") for "long"


def test_an_impression_without_a_basket_in_the_window_is_not_followed():
    q = ServedQuality(window_s=2 * DAY, grace_s=600)
    feed(q, history())
    feed(q, [shown("r1", "u1", T0 + 3 * DAY, "AB"), shown("r2", "u2", T0 + 3 * DAY, "CD")])
    feed(q, [tick(T0 + 5 * DAY + 300)])  # past u2's window, within the grace: still open
    assert q.open_impressions == 2 and "followed_share" not in figures(q)
    feed(q, [*basket("u1", "A", T0 + 5 * DAY + 400), tick(T0 + 5 * DAY + 700)])  # u1's basket: after the window
    f = figures(q)
    assert f["followed_share"] == 0.0 and f["impressions"] == 2 and f["followed"] == 0
    assert "ndcg_at_10" not in f and q.open_impressions == 0


def test_a_basket_is_complete_only_when_event_time_passes_it():
    q = ServedQuality()
    feed(q, [*history(), shown("r1", "u1", T0 + 3 * DAY, "XY"), buy("u1", "X", T0 + 4 * DAY),
             tick(T0 + 4 * DAY)])  # same event time: the basket may still grow
    assert q.open_impressions == 1
    feed(q, [buy("u1", "Y", T0 + 4 * DAY), tick(T0 + 4 * DAY + 1)])
    assert figures(q)["recall_at_10"] == 1.0  # both lines counted


def test_every_impression_before_a_basket_counts_with_its_own_version_and_state():
    q = ServedQuality()
    feed(q, history())
    feed(q, [shown("r1", "u1", T0 + 3 * DAY, "AE", version="v1"), *basket("u1", "A", T0 + 3.5 * DAY),
             shown("r2", "u1", T0 + 4 * DAY, "EA", version="v2"), shown("r3", "u1", T0 + 4.5 * DAY, "AE", "v2"),
             *basket("u1", "E", T0 + 5 * DAY), tick(T0 + 6 * DAY)])
    assert figures(q, "v1")["ndcg_at_10"] == 1.0  # r1 → basket {A}
    v2 = figures(q, "v2")
    assert v2["impressions"] == 2 and v2["ndcg_at_10"] == pytest.approx((1.0 + ndcg_at_k([1], 1, 10)) / 2)
    assert v2["repeat_hr_at_10"] == 0.0  # E was never bought before, and is not popular
    assert figures(q)["impressions"] == 3
    assert [s.labels["model_version"] for s in q.snapshot(1.7e9) if s.name == "served.ndcg_at_10"] == \
        ["all", "v2", "v1"]  # most recently scored version first


def test_a_basket_at_the_impressions_own_event_time_follows_it():
    """The demo's shoppers ask just before buying, at the visit's event time."""
    q = ServedQuality()
    feed(q, [*history(), shown("r1", "u1", T0 + 3 * DAY, "BA"), *basket("u1", "B", T0 + 3 * DAY),
             tick(T0 + 3 * DAY + 1)])
    assert figures(q)["ndcg_at_10"] == 1.0 and figures(q)["repeat_ndcg_at_10"] == pytest.approx(ndcg_at_k([1], 1, 10))


def in_order_stream() -> list:
    """A replay of 2010 (event time ~13 years behind the wall clock), in event-time order."""
    events: list = [*history()]
    for day, (user, items, shown_items) in enumerate([("u1", "AB", "ABC"), ("u2", "D", "DC"), ("u1", "C", "CA"),
                                                       ("u2", "CE", "EA"), ("u3", "A", "AB")], start=3):
        ts = T0 + day * DAY
        events += [shown(f"r{day}", user, ts - 3600, shown_items, version=f"v{day % 2}"), *basket(user, items, ts)]
    return [*events, tick(T0 + 30 * DAY)]


def snapshot_values(q: ServedQuality) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in q.snapshot(1.7e9)}


def test_a_replay_joins_in_event_time_whatever_the_topics_arrival_order():
    expected = ServedQuality(grace_s=3 * DAY)
    feed(expected, in_order_stream())
    reference = snapshot_values(expected)
    assert reference[("served.impressions", (("model_version", "all"),))] == 5
    assert reference[("served.followed_share", (("model_version", "all"),))] == 1.0

    stream = in_order_stream()
    impressions = [e for e in stream if isinstance(e, Impression)]
    interactions = [e for e in stream if not isinstance(e, Impression)]
    # Interactions run ahead: each impression arrives only after the next two days of purchases.
    ahead = ServedQuality(grace_s=3 * DAY)
    for event in interactions[:-1]:
        ahead.learn_one(event)
        while impressions and impressions[0].ts + 2 * DAY <= event.ts:
            ahead.show(impressions.pop(0))
    feed(ahead, [*impressions, interactions[-1]])
    assert snapshot_values(ahead) == reference

    # Impressions run ahead: every impression arrives before the purchases that came before it.
    behind = ServedQuality(grace_s=3 * DAY)
    feed(behind, [*[e for e in stream if isinstance(e, Impression)], *interactions])
    assert snapshot_values(behind) == reference


def test_an_impression_older_than_a_settled_basket_of_its_shopper_is_counted_late():
    q = ServedQuality(grace_s=600)
    feed(q, [*history(), tick(T0 + 10 * DAY)])
    assert not q.show(shown("old", "u1", T0 + 0.5 * DAY, "AB"))  # u1's basket at T0 + 1 day has settled
    assert q.show(shown("fine", "u2", T0 + 2 * DAY, "CD"))  # u2 bought nothing since: exact, still joins
    assert snapshot_values(q)[("served.unjoined", (("reason", "late"),))] == 1


def test_redeliveries_and_empty_lists_are_not_joined_and_open_impressions_are_bounded():
    q = ServedQuality(max_open=2)
    assert q.show(shown("r1", "u1", T0, "A")) and not q.show(shown("r1", "u1", T0, "A"))
    assert not q.show(shown("empty", "u1", T0, ""))
    q.show(shown("r2", "u2", T0, "A"))
    q.show(shown("r3", "u3", T0, "A"))
    assert q.open_impressions == 2 and q.unjoined["overflow"] == 1


def test_snapshots_are_valid_records():
    q = ServedQuality()
    feed(q, in_order_stream())
    snapshots = q.snapshot(1.7e9)
    assert {"served.ndcg_at_10", "served.repeat_ndcg_at_10", "served.lift_over_repeat", "served.followed_share",
            "served.hr_at_10", "served.recall_at_10"} <= {s.name for s in snapshots}
    for s in snapshots:
        assert math.isfinite(s.value) and decode(MetricSnapshot, encode(s)) == s


def test_score_list_reads_the_list_up_to_k():
    assert score_list(("A", "B"), {"B"}, k=1) == {"hr": 0.0, "ndcg": 0.0, "recall": 0.0}
    assert score_list(("A", "B"), {"B"}, k=2)["ndcg"] == pytest.approx(ndcg_at_k([1], 1, 2))


def test_a_visitor_who_never_buys_is_forgotten_when_their_impression_closes():
    q = ServedQuality(window_s=DAY, grace_s=0)
    q.show(shown("r1", "browser", T0, "AB"))
    feed(q, [tick(T0 + 2 * DAY)])
    assert figures(q)["followed_share"] == 0.0 and "browser" not in q._shoppers
