"""Explanations are faithful on real data: the history item an explanation cites is one the score depends on.

For real Online Retail shoppers, each recommendation's score is recomputed with the cited history
item removed from the shopper's purchases, and with a random other history item removed. Removing
the cited item must lower the score more in at least 90% of cases, for the version-0 model and for
a head that mixes the terms differently (as trained versions do), so every style is exercised.

"Removing from the history" changes what the shopper bought — their repeat weights, the kNN votes
of their recent baskets and their text vector — while the shop-wide co-purchase and popularity
statistics stay as they are: the counterfactual is "had this shopper not bought it".
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from learner.baskets import Basket
from learner.encoder import tiny_bert
from learner.rich_features import FEATURE_NAMES, RichFeatures, ShopperLog
from ops.shop_files import load_shop
from serving.history import LiveBehaviour
from serving.recommender import Recommender
from serving.settings import ServingSettings
from serving.state import CatalogueSnapshot, StateBuilder, frozen_head
from streams.records import Item
from tests.conftest import DATA

pytestmark = pytest.mark.slow

USERS = 40
K = 5


@pytest.fixture(scope="module")
def shop():
    torch.set_num_threads(1)
    data = load_shop(DATA)
    baskets, texts = data.baskets, data.item_texts()
    features = RichFeatures(data.index)
    features.learn(baskets)
    by_user: dict[str, list[Basket]] = {}
    for basket in baskets:
        by_user.setdefault(basket.user_id, []).append(basket)
    rng = np.random.default_rng(7)
    regulars = sorted(u for u, bs in by_user.items() if len(bs) >= 3)
    users = [str(u) for u in rng.choice(regulars, USERS, replace=False)]
    state = StateBuilder(tiny_bert(seed=0)).build(
        None, CatalogueSnapshot(tuple(texts), np.ones(len(texts), dtype=bool), 0))
    return features, by_user, users, state


def with_history(shared: RichFeatures, user: str, baskets: list[Basket]) -> RichFeatures:
    """Features where ``user`` bought exactly ``baskets``; shop-wide statistics are ``shared``'s."""
    features = RichFeatures(shared.index)
    for shop_wide in ("cooccurrence", "popularity", "popularity_7d", "clock", "_buyers", "_repeaters"):
        setattr(features, shop_wide, getattr(shared, shop_wide))
    for part in (features.repeat, features.recent, features.long_history):
        part.learn(baskets)
    log = features._shoppers[user] = ShopperLog()
    for basket in baskets:
        log.add(basket)
    return features


def catalogued(features: RichFeatures, state) -> LiveBehaviour:
    """What serving knows with ``features``: every item of ``state`` in the catalogue (lists hold only those)."""
    live = LiveBehaviour(features)
    for i, text in enumerate(state.catalogue.texts):
        live.learn_item(Item(item_id=features.index.code_of(i), title=text))
    return live


def without(baskets: list[Basket], item: int) -> list[Basket]:
    kept = [dataclasses.replace(b, items=tuple(i for i in b.items if i != item)) for b in baskets]
    return [b for b in kept if b.items]


def score_of(state, features: RichFeatures, user: str, item: int) -> float:
    history = state.usable_history(features.history(user))
    scores, _ = state.score_all(history, features.matrix(user, np.arange(state.n_items)))
    return float(scores[item])


def mixed_head(state):
    """A head that weighs co-purchases and text as a trained version might."""
    head = frozen_head(state.config)
    with torch.no_grad():
        weights = dict.fromkeys(FEATURE_NAMES, 0.0) | {"repeat": 1.0, "knn": 1.2, "pop_30d": 0.1}
        head.linear.weight.copy_(torch.tensor([[weights[name] for name in FEATURE_NAMES[: head.n_mixed]]]))
        head.log_text_scale.fill_(float(np.log(0.8)))
    return dataclasses.replace(state, head=head)


@pytest.mark.parametrize("head", ["version0", "mixed"])
def test_removing_the_cited_item_lowers_the_score_more_than_removing_another(shop, head):
    shared, by_user, users, state = shop
    if head == "mixed":
        state = mixed_head(state)
    rng = np.random.default_rng(11)
    outcomes: Counter[tuple[str, bool]] = Counter()
    for user in users:
        full = with_history(shared, user, by_user[user])
        recommender = Recommender(catalogued(full, state), ServingSettings(adapter_key="k"))
        recommendation = asyncio.run(recommender.recommend(state, user, K))
        history = full.history(user)
        for item in recommendation.items:
            explanation = item["explanation"]
            if not explanation["cited"]:
                continue
            target = shared.index.index_of(item["item_id"])
            cited = [shared.index.index_of(c["item_id"]) for c in explanation["cited"]]
            others = [h for h in history if h not in cited and h != target]
            if not others:
                continue
            other = int(rng.choice(others))
            base = score_of(state, full, user, target)
            drop_cited = base - score_of(state, with_history(shared, user, without(by_user[user], cited[0])),
                                         user, target)
            drop_other = base - score_of(state, with_history(shared, user, without(by_user[user], other)),
                                         user, target)
            outcomes[explanation["style"], drop_cited > drop_other] += 1
    cases = sum(outcomes.values())
    faithful = sum(n for (_, ok), n in outcomes.items() if ok)
    assert cases >= 100, outcomes
    assert faithful / cases >= 0.9, outcomes
    if head == "mixed":
        styles = {style for style, _ in outcomes}
        assert {"history", "co_purchase", "similar_text"} <= styles, outcomes
