"""Explanations cite what actually drives the score: term contributions, evidence, text shares, wording."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.model import FusionHead, ModelConfig
from learner.rich_features import FEATURE_NAMES
from serving.explain import (
    STYLE_OF_TERM,
    TERM_COLUMNS,
    TERMS,
    Explainer,
    co_purchase_support,
    term_contributions,
    text_support,
)
from serving.state import StateBuilder
from streams.records import EXPLANATION_STYLES
from tests.unit.test_serving_state import make_live

KNN = FEATURE_NAMES.index("knn")


@pytest.fixture(scope="module")
def live():
    return make_live()


@pytest.fixture(scope="module")
def builder(base):
    return StateBuilder(base)


@pytest.fixture(scope="module")
def state(builder, live):
    return builder.build(None, live.snapshot())


def explain_top(state, live, user: str, k: int = 8):
    features = live.features
    history = state.usable_history(features.history(user))
    rows = features.matrix(user, np.arange(state.n_items))
    scores, cosine = state.score_all(history, rows)
    top = torch.topk(scores, k).indices.numpy()
    explainer = Explainer(live.item_id, live.title)
    return top, explainer.explain(state, features, user, history, top, rows[top], cosine.numpy()[top])


def test_styles_are_the_contract_ones():
    assert set(STYLE_OF_TERM.values()) == set(EXPLANATION_STYLES)


def test_contributions_of_the_linear_head_are_exact():
    head = FusionHead(ModelConfig(head_hidden=0))
    with torch.no_grad():
        head.linear.weight.copy_(torch.linspace(-1.0, 1.0, head.n_mixed))
    features = np.random.default_rng(0).random((2, len(FEATURE_NAMES)))
    cosine = np.array([0.4, -0.2])
    contributions = term_contributions(head, features, cosine)
    weights = np.append(head.linear.weight.detach().numpy()[0], head.dismissed_weight.item())  # dismissed: last
    per_column = features * weights
    expected = np.column_stack([per_column[:, [FEATURE_NAMES.index(c) for c in TERM_COLUMNS[term]]].sum(1)
                                for term in TERMS if term != "text"] + [cosine * head.log_text_scale.exp().item()])
    np.testing.assert_allclose(contributions, expected, rtol=1e-5, atol=1e-5)


def test_contributions_are_named_and_add_up_to_the_score_with_a_non_linear_head(state, live):
    """Shapley values over the terms: with the MLP head, baseline + contributions is each item's score exactly."""
    features = live.features
    history = state.usable_history(features.history("u5"))
    rows = features.matrix("u5", np.arange(state.n_items))
    scores, _ = state.score_all(history, rows)
    assert state.head.mlp is not None  # the default head is not linear: single occlusions would not add up
    top, explanations = explain_top(state, live, "u5", k=6)
    for item, explanation in zip(top.tolist(), explanations, strict=True):
        assert set(explanation.contributions) == set(TERMS)
        total = explanation.baseline + sum(explanation.contributions.values())
        assert total == pytest.approx(float(scores[item]), abs=1e-5)


def test_co_purchase_support_is_the_evidence_the_features_give(live):
    features = live.features
    items = np.arange(len(features.index))
    history, support = co_purchase_support(features, "u4", items)
    for item in items:
        evidence = dict(features.evidence("u4", int(item), top=100))
        evidence.pop(int(item), None)  # the repeat term: cited separately as "history"
        ours = {int(h): float(s) for h, s in zip(history, support[:, item], strict=True) if s > 0}
        assert ours.keys() == evidence.keys()
        for h, weight in ours.items():
            assert weight == pytest.approx(evidence[h], rel=1e-6)


def test_text_support_is_what_leaving_each_item_out_does_to_the_cosine(state, live):
    history = state.usable_history(live.features.history("u2"))
    items = [0, 5, 17]
    full = state.item_vectors[items] @ state.user_vector(history)
    support = text_support(state, history, items)
    for row, left_out in enumerate(history):
        rest = [h for h in history if h != left_out]
        expected = full - state.item_vectors[items] @ state.user_vector(rest)
        np.testing.assert_allclose(support[row], expected.numpy(), atol=1e-5)
    assert text_support(state, history[:1], items)[0] == pytest.approx(full_one := (
        state.item_vectors[items] @ state.user_vector(history[:1])).numpy(), abs=1e-6) and len(full_one) == 3


def test_repeat_purchases_are_explained_by_the_item_itself(state, live):
    top, explanations = explain_top(state, live, "u1")
    bought = set(live.features.history("u1"))
    for item, explanation in zip(top, explanations, strict=True):
        if explanation.style == "history":
            assert int(item) in bought
            assert [c.item for c in explanation.cited] == [int(item)]
            assert explanation.text == f"Because you bought {live.title(int(item))} before"
    assert explanations[0].style == "history" and 0.5 < explanations[0].confidence <= 1.0


def test_items_not_bought_before_cite_co_purchases(builder, live):
    state = builder.build(None, live.snapshot())
    with torch.no_grad():  # co-purchases weigh as much as repeats (after training they may well)
        state.head.linear.weight[0, KNN] = 1.0
    features = live.features
    explainer = Explainer(live.item_id, live.title)
    bought = set(features.history("u1"))
    rows = features.matrix("u1", np.arange(state.n_items))
    fresh = [i for i in np.argsort(-rows[:, KNN]) if i not in bought and rows[i, KNN] > 0][:3]
    assert fresh, "the shop has co-purchases for u1"
    history = state.usable_history(features.history("u1"))
    _, cosine = state.score_all(history, rows)
    for item, explanation in zip(fresh, explainer.explain(state, features, "u1", history, fresh, rows[fresh],
                                                          cosine.numpy()[fresh]), strict=True):
        assert explanation.style == "co_purchase"
        evidence = [h for h, _ in features.evidence("u1", int(item), top=3)]
        assert [c.item for c in explanation.cited] == evidence
        assert sum(c.weight for c in explanation.cited) <= 1.0 + 1e-9
        assert explanation.text.startswith(f"Because you bought {explanation.cited[0].title}")


def test_text_driven_scores_cite_similar_titles(builder, live):
    state = builder.build(None, live.snapshot())
    with torch.no_grad():  # a head that ranks by text alone
        state.head.linear.weight.zero_()
        state.head.log_text_scale.fill_(0.0)
    explainer = Explainer(live.item_id, live.title)
    history = [live.features.index.index_of("I000")]  # RED HEART
    rows = np.zeros((state.n_items, len(FEATURE_NAMES)), dtype=np.float32)
    candidates = [i for i in range(state.n_items) if i not in history]
    _, cosine = state.score_all(history, rows)
    explanations = explainer.explain(state, live.features, "u1", history, candidates, rows[candidates],
                                     cosine.numpy()[candidates])
    similar = [e for e in explanations if e.style == "similar_text"]
    assert similar and all([c.item for c in e.cited] == history for e in similar)
    red = [e for i, e in zip(candidates, explanations, strict=True) if live.title(i).startswith("RED ")]
    assert any(e.matching_words == ("red",) for e in red if e.style == "similar_text")


def test_explanations_are_stable_and_serialisable(state, live):
    _, first = explain_top(state, live, "u5", k=5)
    _, second = explain_top(state, live, "u5", k=5)
    assert [e.explanation_id for e in first] == [e.explanation_id for e in second]
    assert len({e.explanation_id for e in first}) == 5
    for explanation in first:
        data = explanation.to_dict()
        assert set(data) == {"explanation_id", "style", "cited", "matching_words", "confidence", "text",
                             "contributions", "baseline"}
        assert data["style"] in EXPLANATION_STYLES and 0.0 <= data["confidence"] <= 1.0
        assert all(set(c) == {"item_id", "title", "weight"} for c in data["cited"])


def test_unknown_shoppers_get_an_honest_popularity_explanation(state, live):
    explainer = Explainer(live.item_id, live.title)
    top = live.features.popular(3)
    explanations = explainer.popular(state, live.features, "stranger", top)
    assert all(e.style == "popular" and not e.cited for e in explanations)
    assert "we do not know your purchases yet" in explanations[0].text
    assert "bought in" in explanations[0].text
