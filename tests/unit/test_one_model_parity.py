"""One model: what ``recloop eval`` scores is what a serving worker serves, list for list.

The evaluation's recloop (:class:`ops.served_recommender.ServedRecommender`) learns a prefix of the bundled
data through the deployed learner. A separate serving worker's pieces — its own
:class:`~serving.history.LiveBehaviour` fed the same records, a :class:`~serving.updates.StateUpdater` that
verifies and builds the newest published adapter, and the ``GET /recommend`` ranking code — must then return
the same top-10 for sampled shoppers as the evaluation ranks them — with serving's new-item stage
(:mod:`serving.new_items`), and with a stage that changes lists.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from learner.baskets import DEFAULT_DATA_PATH, timestamp_groups
from learner.ranker_config import RankerConfig
from ops.served_recommender import WATERMARK_S, ServedRecommender
from ops.shop_files import load_shop
from serving.history import LiveBehaviour
from serving.new_items import NO_SLATE, NewItemSlate
from serving.recommender import Recommender
from serving.settings import ServingSettings
from serving.state import StateBuilder, StateHolder
from serving.updates import StateUpdater
from streams.records import Interaction, Item, encode

pytestmark = pytest.mark.slow


class _Quiet:
    def swapped(self, swap, cause: str) -> None: ...

    def rejected(self, kind: str, reason: str) -> None:
        raise AssertionError(f"serving rejected an update of the learner: {kind}: {reason}")


def test_eval_recommender_and_a_serving_worker_return_the_same_top_10(base, monkeypatch):
    shop = load_shop(DEFAULT_DATA_PATH)
    items = shop.items()
    evaluated = ServedRecommender(base, items, config=RankerConfig(window_baskets=24, text_every_windows=2))
    published = []
    publish = evaluated._publish
    evaluated._publish = lambda update: (published.append(update) if update is not None else None, publish(update))

    serving = LiveBehaviour()  # a serving worker's own view of the topics
    catalogued: set[int] = set()
    for group in timestamp_groups(shop.baskets[:2500]):
        evaluated.learn(group)
        ts = group[0].ts
        for basket in group:
            for n, item in enumerate(basket.items):
                serving.learn_interaction(Interaction(f"{basket.user_id}|{ts}|{n}", basket.user_id, items[item][0],
                                                      "purchase", ts))
        serving.features.advance_to(ts + WATERMARK_S)  # the next event moves event time past the basket
        for item in (i for b in group for i in b.items if i not in catalogued):
            catalogued.add(item)
            serving.learn_item(Item(*items[item]))
    try:
        assert len(published) >= 2 and evaluated.versions_served == len(published)
        updater = StateUpdater(StateBuilder(base), StateHolder(), serving, evaluated.updater.key, _Quiet())
        outcome = asyncio.run(updater.apply(encode(published[-1])))
        assert outcome.accepted and updater.holder.current.version == published[-1].version
        recommender = Recommender(serving, ServingSettings(adapter_key="unused"))

        shoppers = sorted({b.user_id for b in shop.baskets[:2500]})
        rng = np.random.default_rng(3)
        candidates = np.array(sorted(catalogued))
        sampled = rng.choice(shoppers, 25, replace=False).tolist()

        def same_top_10() -> int:
            """Compare the sampled shoppers' lists; how many the new-item stage changed."""
            changed = 0
            for user in sampled:
                served = asyncio.run(recommender.recommend(updater.holder.current, user, 10))
                top = candidates[np.argsort(-evaluated.score(user, candidates), kind="stable")[:10]]
                assert [i["item_id"] for i in served.items] == [items[i][0] for i in top], user
                assert served.model_version == evaluated.holder.current.version
                model = candidates[np.argsort(-evaluated.score(user, candidates, NO_SLATE), kind="stable")[:10]]
                changed += model.tolist() != top.tolist()
            return changed

        same_top_10()
        # the text view of the evaluation (recloop_text_only) is the serving worker's text cosine, to the noise of
        # item vectors encoded in other batches (measured: up to 2e-4; another tower or shopper vector is far off)
        state = updater.holder.current
        positions = np.array([serving.features.index.index_of(items[i][0]) for i in candidates])
        for user in sampled[:5]:
            inputs = serving.ranking_inputs(state, user, ServingSettings.model_fields["max_history"].default)
            cosine = state.score_all(inputs.history, inputs.rows)[1].numpy()[positions]
            np.testing.assert_allclose(evaluated.text_score(user, candidates), cosine, atol=1e-3)
        # a stage that fires for most shoppers: every item first sold in the last 2 days may take the 2 places
        # (also with the tiny encoder, whose items all look alike and would switch the stage off)
        firing = NewItemSlate(days=2.0, min_similarity=-1.0, max_mean_similarity=1.0)
        monkeypatch.setattr("serving.state.NEW_ITEM_SLATE", firing)
        assert same_top_10() >= 5
    finally:
        evaluated.close()
