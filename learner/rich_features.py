"""Richer behavioural features: how often, how recently and how regularly a shopper buys each item.

:class:`~learner.features.BehaviourFeatures` gives the ranking model three columns (repeat, kNN,
popularity), enough for serving to start as the repeat baseline. Next-basket quality on retail data
is mostly about *which* of the shopper's past items come back, and when; the fusion head can only
learn that if it sees the evidence. :class:`RichFeatures` adds it, from the same stream and with the
same test-then-train rule (it learns baskets exactly as its parent does), as the columns named in
:data:`FEATURE_NAMES`:

- repeat at half-lives of 90 (column 0, as in the parent), 7, 30 and 365 days, ``log1p`` scaled;
- ``purchases``: ``log1p`` of the shopper's past baskets holding the item; ``bought_before``: 0/1;
- ``days_since``: ``log1p`` of days since the shopper last bought it (0 when never);
- ``due``: for items bought at least twice, ``log`` of days since the last purchase over the shopper's
  mean gap between purchases of it (0: bought about as often as usual; > 0: overdue), clipped to ±3;
- ``recent_baskets``: the item's weight in the shopper's last 3 baskets (0.7 ** basket age);
- ``knn``: co-purchase kNN from those baskets, scaled to [0, 1] per shopper;
- ``pop_7d``/``pop_30d``: ``log1p`` of baskets buying it in the last 7/30 days, scaled by the top item;
- ``item_repurchase``: smoothed share of the item's buyers who bought it again;
- shopper context, the same on every row (the head's MLP mixes it with the rest): ``log1p`` of their
  basket count, their smoothed share of repeat items per basket, ``log1p`` days since their last basket;
- ``dismissed``: ``log1p`` of the weighted count of times the shopper said the item is *irrelevant* to
  them (explanation feedback "not helpful", reason "irrelevant": :meth:`RichFeatures.learn_dismissal`).
  Only that shopper's row of that item is ever non-zero, so the feedback moves nobody else's ranking;
  the head starts with a strongly negative weight on it (:data:`learner.model.COLUMN_PRIORS`) and the
  listwise loss weighs a dismissed item up as a negative (:func:`learner.ranker.negative_weights`).

Scales are chosen so every column stays roughly within [0, 3]. The features are pure behaviour:
no item ids, nothing specific to one catalogue.

:meth:`RichFeatures.item_age_days` is a fact about each item that is *not* a model input: days since its first
sale (0 when never sold; data that starts mid-history would make every old item look as old as the data:
docs/evaluation.md, "No item age"). Serving's new-item stage (:mod:`serving.new_items`) reads it to tell items
with no sales history from established ones.

>>> from learner.baskets import Basket
>>> f = RichFeatures()
>>> f.learn([Basket("u", 0.0, (0, 1), "a")]); f.learn([Basket("u", 10 * DAY, (0,), "b")])
>>> m = f.matrix("u", np.arange(3), now=20 * DAY)
>>> m.shape == (3, len(FEATURE_NAMES))
True
>>> col = dict(zip(FEATURE_NAMES, m.T.astype(float)))
>>> col["purchases"].round(3).tolist(), col["bought_before"].tolist(), col["due"].round(3).tolist()
([1.099, 0.693, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0])
>>> bool(col["repeat_7d"][0] < col["repeat"][0]), col["item_repurchase"].round(3).tolist()
(True, [0.182, 0.091, 0.1])
>>> f.item_age_days(np.arange(3), now=20 * DAY).tolist()  # item 2 was never sold
[20.0, 20.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from learner.baselines import DAY, RecentPopularity, grown, recency_weights, sparse_to_candidates
from learner.baskets import Basket, ItemIndex
from learner.explanation_bandit import IRRELEVANT_WEIGHT, is_irrelevant
from learner.features import BehaviourFeatures
from streams.records import ExplanationFeedback

FEATURE_NAMES = (
    "repeat", "repeat_7d", "repeat_30d", "repeat_365d", "purchases", "bought_before", "days_since", "due",
    "recent_baskets", "knn", "pop_7d", "pop_30d", "item_repurchase",
    "shopper_baskets", "shopper_repeat_share", "shopper_days_since", "dismissed",
)

#: Half-lives (days) of the repeat columns, in column order.
HALF_LIVES = (90.0, 7.0, 30.0, 365.0)


class ShopperLog:
    """Every (item, timestamp) a shopper bought, in arrival order, in growable arrays."""

    __slots__ = ("items", "ts", "n", "baskets", "last_ts", "repeat_items", "basket_items", "counts")

    def __init__(self) -> None:
        self.items = np.zeros(16, dtype=np.int64)
        self.ts = np.zeros(16)
        self.n = 0
        self.baskets = 0
        self.last_ts = -math.inf
        self.repeat_items = 0  # basket items already bought before (after the first basket)
        self.basket_items = 0  # all items of baskets after the first
        self.counts: dict[int, int] = {}  # item -> baskets holding it

    def add(self, basket: Basket) -> None:
        items = basket.items
        if self.baskets:
            self.repeat_items += sum(1 for item in items if item in self.counts)
            self.basket_items += len(items)
        end = self.n + len(items)
        if end > len(self.items):
            capacity = max(end, 2 * len(self.items))
            self.items = np.resize(self.items, capacity)
            self.ts = np.resize(self.ts, capacity)
        self.items[self.n : end] = items
        self.ts[self.n : end] = basket.ts
        self.n = end
        self.baskets += 1
        self.last_ts = max(self.last_ts, basket.ts)
        for item in items:
            self.counts[item] = self.counts.get(item, 0) + 1


class RichFeatures(BehaviourFeatures):
    """:class:`BehaviourFeatures` plus per-shopper item statistics; :meth:`matrix` returns
    :data:`FEATURE_NAMES` columns. Learning (events or baskets) works exactly as in the parent."""

    feature_names = FEATURE_NAMES

    def __init__(self, index: ItemIndex | None = None, **kwargs) -> None:
        super().__init__(index, **kwargs)
        self.popularity_7d = RecentPopularity(7.0)
        self._shoppers: dict[str, ShopperLog] = {}
        self._buyers = np.zeros(0)  # distinct shoppers who bought the item
        self._repeaters = np.zeros(0)  # ... and bought it in a second basket
        self._first_sold = np.zeros(0)  # event time of the item's first sale (valid where _buyers > 0)
        self._dismissed: dict[str, dict[int, float]] = {}  # shopper -> item -> weighted "irrelevant" count

    def learn_feedback(self, feedback: ExplanationFeedback) -> bool:
        """Learn what explanation feedback says about the *item*: "not helpful, irrelevant" dismisses it for that
        shopper (weight :data:`~learner.explanation_bandit.IRRELEVANT_WEIGHT`); anything else is about the
        explanation only. Whether it dismissed the item."""
        if not is_irrelevant(feedback):
            return False
        self.learn_dismissal(feedback.user_id, feedback.item_id, IRRELEVANT_WEIGHT)
        return True

    def learn_dismissal(self, user_id: str, item_id: str, weight: float) -> None:
        """The shopper said ``item_id`` is irrelevant to them (explanation feedback), counted with ``weight``.

        >>> f = RichFeatures()
        >>> f.learn_dismissal("u", "A", 0.5); f.learn_dismissal("u", "A", 0.5)
        >>> round(float(f.matrix("u", np.arange(1))[0, FEATURE_NAMES.index("dismissed")]), 3), f.dismissed("v", 0)
        (0.693, 0.0)
        """
        if weight <= 0 or not math.isfinite(weight):
            raise ValueError(f"a dismissal needs a positive weight, got {weight}")
        item = self.add_item(item_id)
        counts = self._dismissed.setdefault(user_id, {})
        counts[item] = counts.get(item, 0.0) + weight

    def dismissed(self, user_id: str, item: int) -> float:
        """The shopper's weighted count of "irrelevant" verdicts on ``item`` (0 when none)."""
        return self._dismissed.get(user_id, {}).get(item, 0.0)

    def learn(self, baskets: Iterable[Basket]) -> None:
        baskets = list(baskets)
        for basket in baskets:
            log = self._shoppers.setdefault(basket.user_id, ShopperLog())
            size = max(basket.items, default=-1) + 1
            self._buyers = grown(self._buyers, size)
            self._repeaters = grown(self._repeaters, size)
            self._first_sold = grown(self._first_sold, size)
            for item in basket.items:
                bought = log.counts.get(item, 0)
                if self._buyers[item] == 0:
                    self._first_sold[item] = basket.ts
                if bought == 0:
                    self._buyers[item] += 1
                elif bought == 1:
                    self._repeaters[item] += 1
            log.add(basket)
        self.popularity_7d.learn(baskets)
        super().learn(baskets)

    def __setstate__(self, state: dict) -> None:
        """A checkpoint written before first sales were tracked: its sold items count as sold long ago (never new)."""
        super().__setstate__(state)
        if "_first_sold" not in state:
            self._first_sold = np.where(self._buyers > 0, -np.inf, 0.0)

    def _advance_windows(self, now: float) -> None:
        super()._advance_windows(now)
        self.popularity_7d.advance_to(now)

    def item_age_days(self, candidates: np.ndarray, now: float | None = None) -> np.ndarray:
        """Days from each candidate's first sale to ``now`` (default: the newest timestamp learned); 0 when never sold.

        >>> f = RichFeatures()
        >>> f.learn([Basket("u", 0.0, (1,), "a")]); f.learn([Basket("v", 3 * DAY, (1, 2), "b")])
        >>> f.item_age_days(np.arange(4)).tolist()
        [0.0, 3.0, 0.0, 0.0]
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        now = self.clock if now is None else now
        if not math.isfinite(now):
            now = 0.0
        sold = _gather(self._buyers, candidates) > 0
        first = _gather(self._first_sold, candidates)
        return np.where(sold, np.maximum(now - np.where(sold, first, now), 0.0) / DAY, 0.0)

    def matrix(self, user_id: str, candidates: np.ndarray, now: float | None = None) -> np.ndarray:
        """Feature rows (:data:`FEATURE_NAMES` columns) for ``candidates``, float32 ``[n, len(FEATURE_NAMES)]``.

        ``now`` is the moment of the choice (default: the newest timestamp learned).
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        now = self.clock if now is None else now
        if not math.isfinite(now):
            now = 0.0
        out = np.zeros((len(candidates), len(FEATURE_NAMES)), dtype=np.float32)
        col = {name: i for i, name in enumerate(FEATURE_NAMES)}
        log = self._shoppers.get(user_id)
        if log is not None and log.n:
            items, ts = log.items[: log.n], log.ts[: log.n]
            distinct, inverse = np.unique(items, return_inverse=True)
            age_days = np.maximum(now - ts, 0.0) / DAY
            for name, half_life in zip(("repeat", "repeat_7d", "repeat_30d", "repeat_365d"), HALF_LIVES,
                                       strict=True):
                decayed = np.bincount(inverse, 0.5 ** (age_days / half_life), minlength=len(distinct))
                out[:, col[name]] = np.log1p(sparse_to_candidates(distinct, decayed, candidates))
            count = np.bincount(inverse, minlength=len(distinct)).astype(np.float64)
            last = np.full(len(distinct), -np.inf)
            first = np.full(len(distinct), np.inf)
            np.maximum.at(last, inverse, ts)
            np.minimum.at(first, inverse, ts)
            since = np.maximum(now - last, 0.0) / DAY
            mean_gap = np.where(count > 1, (last - first) / DAY / np.maximum(count - 1, 1), np.nan)
            due = np.where(count > 1, np.clip(np.log((since + 1.0) / (mean_gap + 1.0)), -3.0, 3.0), 0.0)
            out[:, col["purchases"]] = np.log1p(sparse_to_candidates(distinct, count, candidates))
            out[:, col["bought_before"]] = sparse_to_candidates(distinct, np.ones(len(distinct)), candidates)
            out[:, col["days_since"]] = sparse_to_candidates(distinct, np.log1p(since) / 3.0, candidates)
            out[:, col["due"]] = sparse_to_candidates(distinct, due, candidates)
            out[:, col["shopper_baskets"]] = math.log1p(log.baskets) / 3.0
            out[:, col["shopper_repeat_share"]] = (log.repeat_items + 1.0) / (log.basket_items + 2.0)
            out[:, col["shopper_days_since"]] = math.log1p(max(now - log.last_ts, 0.0) / DAY) / 3.0
        # scaled over the whole catalogue, so a row does not depend on which other candidates are scored
        catalogue = np.arange(max(self.cooccurrence.n_items, int(candidates.max(initial=-1)) + 1))
        recent_items, recent_weights = recency_weights(self.recent.recent(user_id), self.basket_decay)
        if len(recent_items):
            out[:, col["recent_baskets"]] = sparse_to_candidates(recent_items, recent_weights, candidates)
            knn = _scaled(self.cooccurrence.knn_scores(recent_items, recent_weights, catalogue))
            out[:, col["knn"]] = knn[candidates]
        out[:, col["pop_7d"]] = _scaled(np.log1p(self.popularity_7d.scores(catalogue)))[candidates]
        out[:, col["pop_30d"]] = _scaled(np.log1p(self.popularity.scores(catalogue)))[candidates]
        buyers = _gather(self._buyers, candidates)
        out[:, col["item_repurchase"]] = (_gather(self._repeaters, candidates) + 1.0) / (buyers + 10.0)
        dismissed = self._dismissed.get(user_id)
        if dismissed:
            items = np.fromiter(dismissed, dtype=np.int64, count=len(dismissed))
            counts = np.fromiter(dismissed.values(), dtype=np.float64, count=len(dismissed))
            out[:, col["dismissed"]] = np.log1p(sparse_to_candidates(items, counts, candidates))
        return out


def _gather(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    out = np.zeros(len(candidates))
    known = candidates < len(values)
    out[known] = values[candidates[known]]
    return out


def _scaled(values: np.ndarray) -> np.ndarray:
    top = float(values.max(initial=0.0))
    return values / top if top > 0 else values


