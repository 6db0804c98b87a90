"""Behaviour features from single events equal the offline basket path, and only use earlier timestamps."""

from __future__ import annotations

import numpy as np

from learner.baskets import Basket, ItemIndex
from learner.features import BehaviourFeatures

DAY = 86_400.0


def test_streamed_events_give_the_same_features_as_whole_baskets():
    baskets = [Basket("u1", 0.0, (0, 1), "i1"), Basket("u2", 0.0, (1, 2), "i2"), Basket("u1", DAY, (2,), "i3"),
               Basket("u2", 3 * DAY, (0,), "i4")]
    index = ItemIndex(["A", "B", "C"])
    offline = BehaviourFeatures(ItemIndex(["A", "B", "C"]))
    offline.learn(baskets)
    online = BehaviourFeatures(index)
    for basket in baskets:
        for item in basket.items:
            online.learn_interaction(basket.user_id, index.code_of(item), "purchase", basket.ts)
            online.learn_interaction(basket.user_id, index.code_of(item), "purchase", basket.ts)  # a 2nd line
    online.flush()
    for user in ("u1", "u2"):
        np.testing.assert_allclose(online.matrix(user, np.arange(3)), offline.matrix(user, np.arange(3)))
        assert online.history(user) == offline.history(user)


def test_a_basket_is_invisible_until_event_time_moves_past_it():
    features = BehaviourFeatures(lateness_s=60.0)
    features.learn_interaction("u1", "A", "purchase", 10.0)
    assert not features.knows("u1")
    features.learn_interaction("u1", "B", "view", 11.0)  # the shopper's own later event closes it at once
    assert features.knows("u1") and features.history("u1") == (0,)
    features.learn_interaction("u2", "A", "purchase", 20.0)
    features.learn_interaction("u9", "B", "view", 79.0)  # another shopper's: only once past the lateness
    assert not features.knows("u2")
    features.learn_interaction("u9", "B", "view", 81.0)
    assert features.knows("u2")
    features.learn_interaction("u3", "A", "purchase", 100.0)
    features.advance_to(100.5)  # a watermark (a visit's event time) closes everything before it
    assert features.knows("u3")


def test_a_basket_interleaved_with_other_partitions_stays_one_basket():
    """Partitions reach the consumer interleaved: a basket's lines may come after other shoppers' later events."""
    features = BehaviourFeatures()
    for user, item, ts in [("u1", "A", 0.0), ("u2", "B", 60.0), ("u1", "C", 0.0), ("u3", "D", 300.0),
                           ("u1", "E", 0.0), ("u1", "A", 900.0)]:
        features.learn_interaction(user, item, "purchase", ts)
    assert features.long_history.recent("u1") == [(0, 2, 4)]


def test_returns_and_views_do_not_count_as_purchases():
    features = BehaviourFeatures()
    features.learn_interaction("u1", "A", "return", 1.0)
    features.learn_interaction("u1", "B", "click", 1.0)
    features.flush()
    assert not features.knows("u1")


def test_popular_lists_the_most_bought_items_first():
    features = BehaviourFeatures()
    for user, item in [("a", "X"), ("b", "X"), ("c", "Y"), ("a", "Z"), ("b", "Z"), ("c", "Z")]:
        features.learn_interaction(user, item, "purchase", 5.0)
    features.flush()
    assert [features.index.code_of(i) for i in features.popular(2)] == ["Z", "X"]
