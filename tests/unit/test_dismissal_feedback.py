"""Explanation feedback "irrelevant" reaches the ranker: a weighted negative for that shopper and item only.

Runs the learner service twice on the same history (no broker): once as is, once told by a shopper that
their top item is irrelevant to them. The told learner keeps that item out of the shopper's top 10 after
its next published version; every other shopper's list is what the untold learner ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.rich_features import FEATURE_NAMES, RichFeatures
from serving.history import LiveBehaviour
from streams.records import ExplanationFeedback, encode
from streams.topics import EXPLANATION_FEEDBACK
from tests.unit.test_learner_service import make_service, top10

DISMISSED = FEATURE_NAMES.index("dismissed")


def verdict(n: int, user: str, item: str, ts: float, *, reason: str | None = "irrelevant",
            helpful: bool = False) -> ExplanationFeedback:
    return ExplanationFeedback(f"fb{n}", user, f"r{n}", item, f"x{n}", "history", helpful, ts, reason)


def learn_until_next_version(services, records, size: int = 500) -> None:
    """Feed both services the same records until each has published one more version."""
    start = [len(s.status.published) for s in services]
    for i in range(0, len(records), size):
        for service in services:
            service.process(records[i:i + size])
        if all(len(s.status.published) > n for s, n in zip(services, start, strict=True)):
            return
    pytest.fail("no new version was published")


def test_an_item_dismissed_twice_leaves_that_shoppers_top10_and_no_other_list_moves(base, retail, tmp_path):
    items, interactions = retail
    history, later = interactions[:5000], interactions[5000:]
    plain, told = make_service(base, tmp_path / "plain"), make_service(base, tmp_path / "told")
    for service in (plain, told):
        service.process([*items, *history])
        assert service.status.published  # the head that ranks below is a trained, published one
    users = sorted({e.user_id for e in history if told.features.knows(e.user_id)})
    shopper = users[0]
    top = top10(told, [shopper])[shopper][0]  # their best-ranked item: the hardest one to push out
    item_id = told.features.index.code_of(top)
    ts = history[-1].ts + 60
    verdicts = [verdict(1, shopper, item_id, ts), verdict(2, shopper, item_id, ts + 1)]
    unrelated = [verdict(3, shopper, item_id, ts + 2, reason="unclear"), verdict(4, shopper, item_id, ts + 3,
                                                                                   helpful=True)]
    told.process([*verdicts, verdicts[0], *unrelated])  # a redelivered verdict counts once; other reasons never
    assert told.status.dismissals == 2
    assert told.features.dismissed(shopper, top) == pytest.approx(1.0)  # two verdicts of weight 0.5

    learn_until_next_version((plain, told), later)
    assert top not in top10(told, [shopper])[shopper]
    assert top in top10(plain, [shopper])[shopper]  # the untold learner still ranks it: the feedback did it
    others = [u for u in users if u != shopper][:60]
    assert top10(told, others) == top10(plain, others)
    assert told.model.head.dismissed_weight.item() < 0  # a dismissal lowers the score


def test_serving_learns_dismissals_from_the_feedback_topic_once_per_event():
    live = LiveBehaviour(RichFeatures())
    value = encode(verdict(1, "u1", "85123A", 1.3e9))
    for _ in range(2):  # the same event twice (a client's retry): counted once
        live.apply(EXPLANATION_FEEDBACK.name, b"u1", value)
    live.apply(EXPLANATION_FEEDBACK.name, b"u1", encode(verdict(2, "u1", "22423", 1.3e9, reason="unclear")))
    live.apply(EXPLANATION_FEEDBACK.name, b"u1", b"{not json")
    assert live.features.index.codes == ("85123A",)  # feedback about the explanation alone teaches serving nothing
    np.testing.assert_allclose(live.features.matrix("u1", np.arange(1))[:, DISMISSED], [np.log1p(0.5)], rtol=1e-6)
    assert live.features.matrix("u2", np.arange(1))[:, DISMISSED].tolist() == [0.0]
    assert live.counts["dismissals"] == 1 and live.counts["duplicate_feedback"] == 1 and live.counts["invalid"] == 1


def test_a_dismissal_only_ever_lowers_the_score_by_exactly_its_named_contribution():
    from learner.model import FusionHead, ModelConfig
    from serving.explain import TERMS, shapley_contributions

    head = FusionHead(ModelConfig())
    rows = np.random.default_rng(0).random((3, len(FEATURE_NAMES))).astype(np.float32)
    rows[:, DISMISSED] = [0.0, np.log1p(0.5), np.log1p(1.0)]
    cosine = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    values, _ = shapley_contributions(head, rows, cosine)
    feedback = values[:, TERMS.index("feedback")]
    assert feedback[0] == 0.0 and feedback[2] < feedback[1] < 0
    undismissed = rows.copy()
    undismissed[:, DISMISSED] = 0.0
    with torch.no_grad():
        drop = head(torch.from_numpy(undismissed), torch.from_numpy(cosine)) - head(torch.from_numpy(rows),
                                                                                  torch.from_numpy(cosine))
    np.testing.assert_allclose(-feedback, drop.numpy(), atol=1e-5)
