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
    features = BehaviourFeatures()
    features.learn_interaction("u1", "A", "purchase", 10.0)
    assert not features.knows("u1")
    features.learn_interaction("u9", "B", "view", 11.0)  # any later event closes the basket
    assert features.knows("u1") and features.history("u1") == (0,)


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
