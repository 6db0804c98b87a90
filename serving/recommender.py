"""Ranking the catalogue for one shopper with the serving state, and explaining the top ``k``: the lists of
``/recommend`` and ``/search`` (:mod:`serving.search`), within a request's filters (:mod:`serving.filters`)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from learner.rich_features import FEATURE_NAMES
from serving.explain import Explainer, Explanation, with_calibrated_confidence
from serving.filters import Filters
from serving.history import LiveBehaviour, RankingInputs
from serving.policy import PolicyHolder, style_chooser
from serving.search import CatalogueSearch, SearchHits, with_query
from serving.settings import ServingSettings
from serving.state import ServingState
from streams.records import ExplanationPolicy, Impression, RecommendedItem

POPULARITY_COLUMN = FEATURE_NAMES.index("pop_30d")
NO_FILTERS = Filters()


@dataclass(frozen=True)
class Recommendation:
    """One served list: what the response carries and what the impression records."""

    rec_id: str
    user_id: str | None  #: None: an anonymous search (no impression: nothing to join it with)
    ts: float
    model_version: str
    items: list[dict[str, Any]]
    #: The explanation policy the styles were drawn from (None: no policy yet, the largest term decided).
    policy_version: int | None = None
    source: str = "recommend"  #: the route (``Impression.source``)
    query: str | None = None
    page_item_id: str | None = None
    #: Route-specific fields of the response body (the search's query, whether it was personalised, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps({"rec_id": self.rec_id, "model_version": self.model_version,
                             "policy_version": self.policy_version, **self.extra, "items": self.items})

    def impression(self) -> Impression | None:
        if self.user_id is None:
            return None
        return Impression(self.rec_id, self.user_id, self.ts, self.model_version, tuple(
            RecommendedItem(i["item_id"], i["score"], i["explanation"]) for i in self.items),
            policy_version=self.policy_version, source=self.source, query=self.query,
            page_item_id=self.page_item_id)


class Recommender:
    """Ranks the whole catalogue of one serving state for one shopper and explains the top ``k``.

    Feature rows are computed on the event loop (the stream followers mutate the features on the
    same loop); the torch part only reads the immutable state, so it moves to a thread when its
    moving-average cost exceeds ``inline_scoring_ms``.
    """

    def __init__(self, live: LiveBehaviour, settings: ServingSettings, policies: PolicyHolder | None = None) -> None:
        self.live = live
        self.settings = settings
        self.policies = policies
        self.explainer = Explainer(live.item_id, live.title)
        self.catalogue_search = CatalogueSearch()
        self.scoring_ms = 0.0  # exponential moving average
        self._rec_ids = itertools.count()
        self._rec_prefix = uuid.uuid4().hex[:16]  # unique per worker; a counter is cheaper than uuid4 per request

    def new_rec_id(self) -> str:
        return f"{self._rec_prefix}{next(self._rec_ids):016x}"

    async def recommend(self, state: ServingState, user_id: str, k: int, ts: float | None = None,
                        filters: Filters = NO_FILTERS) -> Recommendation:
        """Raises :class:`serving.filters.InvalidFilter` for filters no item could pass."""
        features = self.live.features
        rec_id, now = self.new_rec_id(), time.time() if ts is None else ts
        if ts is not None:
            self.live.visit(ts)
        recommendable = self.live.allowed(state, filters, user_id)
        if not features.knows(user_id):
            return self._popular(state, user_id, k, rec_id, now, recommendable)
        inputs = self.live.ranking_inputs(state, user_id, self.settings.max_history)
        history, rows = inputs.history, inputs.rows
        if self.scoring_ms > self.settings.inline_scoring_ms:
            top, scores, cosine = await asyncio.to_thread(self._timed_top, state, inputs, recommendable, k)
        else:
            top, scores, cosine = self._timed_top(state, inputs, recommendable, k)
        policy = self.policies.current if self.policies is not None else None  # one policy for the whole list
        choose = style_chooser(policy, user_id, len(features.long_history.recent(user_id)))
        explanations = self.explainer.explain(state, features, user_id, history, top, rows[top], cosine, choose)
        explanations = [with_calibrated_confidence(e, policy, score) for e, score in zip(explanations, scores.tolist(),
                                                                                           strict=True)]
        items = [self._item(item, score, explanation)
                 for item, score, explanation in zip(top.tolist(), scores.tolist(), explanations, strict=True)]
        return Recommendation(rec_id, user_id, now, state.version, items, _version(policy))

    def _popular(self, state: ServingState, user_id: str, k: int, rec_id: str, now: float,
                 allowed: np.ndarray) -> Recommendation:
        features = self.live.features
        ranked = features.popular(len(features.index))
        usable = ranked[ranked < state.n_items]
        top = usable[allowed[usable]][:k]
        scores = features.matrix(user_id, top)[:, POPULARITY_COLUMN] if len(top) else np.zeros(0)
        explanations = self.explainer.popular(state, features, user_id, top)
        policy = self.policies.current if self.policies is not None else None
        items = [self._item(int(item), float(score), explanation)
                 for item, score, explanation in zip(top.tolist(), scores.tolist(), explanations, strict=True)]
        return Recommendation(rec_id, user_id, now, state.version, items, _version(policy))

    async def search(self, state: ServingState, query: str, user_id: str | None, k: int,
                     filters: Filters = NO_FILTERS, ts: float | None = None) -> Recommendation:
        """The ``k`` best items for ``query`` (:mod:`serving.search`), ranked for ``user_id`` when the model knows
        the shopper, else by recent popularity; explained. Raises :class:`serving.filters.InvalidFilter`.

        Only the lexical matches need the shopper's model score (the rest rank by the query's cosine), so only
        their feature rows are computed and scored; the order is the one of scoring the whole catalogue.
        """
        features = self.live.features
        rec_id, now = self.new_rec_id(), time.time() if ts is None else ts
        if ts is not None:
            self.live.visit(ts)
        allowed = self.live.allowed(state, filters, user_id)
        personal = user_id is not None and features.knows(user_id)
        history = self.live.usable_history(state, user_id, self.settings.max_history) if personal else []
        matched = self.catalogue_search.matches(state, query)
        rows = features.matrix(user_id or "", matched)  # on the loop: the followers write the features here
        hits, cosine = await asyncio.to_thread(self._search_top, state, query, history, matched, rows, personal,
                                               allowed, k)
        top = hits.items
        policy = self.policies.current if self.policies is not None else None
        if personal:
            choose = style_chooser(policy, user_id, len(features.long_history.recent(user_id)))
            explanations = self.explainer.explain(state, features, user_id, history, top,
                                                  features.matrix(user_id, top), cosine, choose)
            explanations = [with_calibrated_confidence(e, policy, score)
                            for e, score in zip(explanations, hits.model_scores.tolist(), strict=True)]
        else:
            explanations = self.explainer.popular(state, features, user_id or "", top)
        texts = state.catalogue.texts
        items = [self._item(item, score, with_query(explanation, query, texts[item]))
                 for item, score, explanation in zip(top.tolist(), hits.scores.tolist(), explanations, strict=True)]
        return Recommendation(rec_id, user_id, now, state.version, items, _version(policy), source="search",
                              query=query, extra={"query": query, "personalised": personal})

    def _search_top(self, state: ServingState, query: str, history: list[int], matched: np.ndarray,
                    rows: np.ndarray, personal: bool, allowed: np.ndarray, k: int) -> tuple[SearchHits, np.ndarray]:
        """The search's top ``k`` and the shopper's text cosines of those items (torch: runs in a thread)."""
        model_scores = np.zeros(state.n_items)
        if personal:
            model_scores[matched] = state.score_items(history, matched, rows)
        else:
            model_scores[matched] = rows[:, POPULARITY_COLUMN]
        hits = self.catalogue_search.search(state, query, model_scores, allowed, k)
        cosine = state.user_cosine(history, hits.items) if personal else np.zeros(len(hits.items))
        return hits, cosine

    def _item(self, item: int, score: float, explanation: Explanation) -> dict[str, Any]:
        return {"item_id": self.live.item_id(item), "title": self.live.title(item), "score": round(score, 6),
                "explanation": explanation.to_dict(), "faithful_styles": list(explanation.faithful_styles)}

    def _timed_top(self, state: ServingState, inputs: RankingInputs, recommendable: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        result = state.top_k(inputs.history, inputs.rows, recommendable, k, ages=inputs.ages)
        self.scoring_ms = 0.9 * self.scoring_ms + 0.1 * (time.perf_counter() - start) * 1000
        return result


def _version(policy: ExplanationPolicy | None) -> int | None:
    return policy.version if policy is not None else None
