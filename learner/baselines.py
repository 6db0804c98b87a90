"""Simple, strong baseline recommenders, and the online features they are built from.

Every recommender has the same two verbs (:class:`Recommender`): ``learn`` a group of baskets that
share one timestamp, and ``score`` a vector of candidate items for one shopper (higher is better).
Both are incremental: learning never refits from scratch, so the same objects serve a stream.

The features are usable on their own, e.g. by a neural ranker that mixes them with text similarity:

- :class:`RecentPopularity` -- how many baskets bought each item in the last 30 days of event time;
- :class:`RepeatScorer` -- the shopper's own purchase history, exponentially decayed with age;
- :class:`ShopperHistory` + :class:`CoOccurrence` -- item-to-item kNN over the shopper's last baskets.

Settings (tuned on a validation window, 2011-06-09..2011-09-09, before the test period of
:mod:`ops.evaluate`; NDCG@10 on that window in brackets):

- repeat half-life 90 days (7 d .277, 30 d .286, 90 d .298, 180 d .298, no decay .297). A 30-day
  half-life reproduces the reference figures exactly (test NDCG@10 .265, HR@10 .689); 90 days is
  +3% on the test period too.
- kNN over the last 3 baskets, weighted 0.7 ** age, every co-bought item voting (keeping only each
  item's top 20 or 50 neighbours scored ~5% lower); an item never votes for itself, so the kNN
  model is pure "bought together" and the blend adds the repeat part.
- blend weight 0.5 (0.05 .287, 0.2 .289, 0.5 .290, 1.0 .287): every blend stays below repeat
  alone, as in the reference -- kNN is a worse tie-breaker than popularity for this data.
- biased MF: 16 factors, 4 random unbought items per bought one (1: .100, 2: .130, 4: .153).

>>> from learner.baskets import Basket
>>> model = RepeatRecommender()
>>> model.learn([Basket("u1", 0.0, (0, 2), "i1")])
>>> model.score("u1", np.arange(3)).tolist()
[1.0, 0.0, 1.0]
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Protocol

import numpy as np

from learner.baskets import Basket

log = logging.getLogger(__name__)

DAY = 86_400.0


class Recommender(Protocol):
    """What the evaluation harness (and serving) needs from a model."""

    name: str

    def learn(self, baskets: list[Basket]) -> None:
        """Learn the baskets of one timestamp, after they were scored."""

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        """One score per candidate item int; higher is better."""


# --------------------------------------------------------------------------- small vector helpers


def gather(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``values[candidates]`` as float64, with 0 for candidates the vector does not reach yet.

    >>> gather(np.array([5.0, 7.0]), np.array([1, 0, 4])).tolist()
    [7.0, 5.0, 0.0]
    """
    out = np.zeros(len(candidates))
    known = candidates < len(values)
    out[known] = values[candidates[known]]
    return out


def sparse_to_candidates(items: np.ndarray, weights: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Spread sparse ``(items, weights)`` onto the candidates; candidates not in ``items`` get 0.

    >>> sparse_to_candidates(np.array([3, 1]), np.array([0.5, 2.0]), np.array([0, 1, 2, 3])).tolist()
    [0.0, 2.0, 0.0, 0.5]
    """
    if len(candidates) == 0:
        return np.zeros(0)
    size = int(max(candidates.max(), items.max(initial=-1))) + 1
    dense = np.zeros(size)
    dense[items] = weights
    return dense[candidates]


def grown(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` zero-padded to at least ``size`` along every axis (capacity doubles, so growing is cheap).

    >>> grown(np.ones(2), 3)[:4].tolist(), grown(np.ones((20, 20)), 21).shape
    ([1.0, 1.0, 0.0, 0.0], (40, 40))
    """
    if values.shape[0] >= size:
        return values
    capacity = max(size, 2 * values.shape[0], 16)
    bigger = np.zeros((capacity,) * values.ndim, dtype=values.dtype)
    bigger[tuple(slice(0, n) for n in values.shape)] = values
    return bigger


def is_prefix(candidates: np.ndarray) -> bool:
    """True when the candidates are exactly 0, 1, ..., n-1 (the whole catalogue seen so far).

    >>> is_prefix(np.arange(4)), is_prefix(np.array([0, 2, 1])), is_prefix(np.array([], dtype=int))
    (True, False, False)
    """
    return len(candidates) > 0 and candidates[0] == 0 and bool(np.all(np.diff(candidates) == 1))


def scaled_to_max(scores: np.ndarray) -> np.ndarray:
    """Divide by the largest score, so features of different scales can be blended (all-zero stays zero).

    >>> scaled_to_max(np.array([1.0, 4.0])).tolist(), scaled_to_max(np.zeros(2)).tolist()
    ([0.25, 1.0], [0.0, 0.0])
    """
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else scores


# --------------------------------------------------------------------------- features


class RecentPopularity:
    """Number of baskets that bought each item in the last ``window_days`` of event time.

    Event time is the newest timestamp learned, or a later ``now`` given to :meth:`advance_to`.

    >>> pop = RecentPopularity(window_days=1)
    >>> pop.learn([Basket("a", 0.0, (0, 1), "i1"), Basket("b", 0.0, (1,), "i2")])
    >>> pop.scores(np.arange(3)).tolist()
    [1.0, 2.0, 0.0]
    >>> pop.advance_to(2 * DAY); pop.scores(np.arange(3)).tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, window_days: float = 30.0) -> None:
        self.window_days = window_days
        self._counts = np.zeros(0)
        self._in_window: deque[tuple[float, tuple[int, ...]]] = deque()
        self.clock = -math.inf

    def learn(self, baskets: Iterable[Basket]) -> None:
        for basket in baskets:
            self._counts = grown(self._counts, max(basket.items, default=-1) + 1)
            self._counts[list(basket.items)] += 1
            self._in_window.append((basket.ts, basket.items))
            self.clock = max(self.clock, basket.ts)
        self._forget_older_than(self.clock - self.window_days * DAY)

    def advance_to(self, now: float) -> None:
        """Move event time forward to ``now`` without learning anything (old baskets leave the window)."""
        self.clock = max(self.clock, now)
        self._forget_older_than(self.clock - self.window_days * DAY)

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        return gather(self._counts, candidates)

    def _forget_older_than(self, cutoff: float) -> None:
        while self._in_window and self._in_window[0][0] <= cutoff:
            _, items = self._in_window.popleft()
            self._counts[list(items)] -= 1


class RepeatScorer:
    """The shopper's own purchases: each past basket adds ``0.5 ** (age / half_life)`` to its items.

    Weights are kept as of the shopper's last purchase and decayed lazily, so learning a basket costs
    O(items the shopper ever bought). Ranking is the same whatever ``now`` is; pass ``now`` to get
    weights comparable across shoppers (e.g. as a feature).

    >>> rep = RepeatScorer(half_life_days=1)
    >>> rep.learn([Basket("a", 0.0, (0,), "i1")]); rep.learn([Basket("a", DAY, (0, 1), "i2")])
    >>> rep.scores("a", np.arange(3)).tolist()
    [1.5, 1.0, 0.0]
    >>> rep.scores("a", np.arange(3), now=2 * DAY).tolist(), rep.scores("nobody", np.arange(2)).tolist()
    ([0.75, 0.5, 0.0], [0.0, 0.0])
    """

    def __init__(self, half_life_days: float = 90.0) -> None:
        self.half_life_days = half_life_days
        self._weights: dict[str, dict[int, float]] = {}
        self._as_of: dict[str, float] = {}

    def learn(self, baskets: Iterable[Basket]) -> None:
        for basket in baskets:
            weights = self._weights_as_of(basket.user_id, basket.ts)
            for item in basket.items:
                weights[item] = weights.get(item, 0.0) + 1.0

    def scores(self, user_id: str, candidates: np.ndarray, now: float | None = None) -> np.ndarray:
        weights = self._weights.get(user_id)
        if not weights:
            return np.zeros(len(candidates))
        items = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        values = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        if now is not None:
            values *= self._decay(now - self._as_of[user_id])
        return sparse_to_candidates(items, values, candidates)

    def knows(self, user_id: str) -> bool:
        return user_id in self._weights

    def items_of(self, user_id: str) -> list[int]:
        """Every item the shopper ever bought (none for a shopper never seen)."""
        return list(self._weights.get(user_id, ()))

    def _weights_as_of(self, user_id: str, ts: float) -> dict[int, float]:
        weights = self._weights.setdefault(user_id, {})
        last = self._as_of.get(user_id, ts)
        if ts > last and weights:
            decay = self._decay(ts - last)
            for item in weights:
                weights[item] *= decay
        self._as_of[user_id] = max(ts, last)
        return weights

    def _decay(self, seconds: float) -> float:
        return 0.5 ** (seconds / (self.half_life_days * DAY))


class ShopperHistory:
    """Each shopper's last ``max_baskets`` baskets, newest last.

    >>> history = ShopperHistory(max_baskets=2)
    >>> history.learn([Basket("a", float(t), (t,), "i") for t in range(3)])
    >>> history.recent("a"), history.recent("b")
    ([(1,), (2,)], [])
    """

    def __init__(self, max_baskets: int = 3) -> None:
        self.max_baskets = max_baskets
        self._baskets: defaultdict[str, deque[tuple[int, ...]]] = defaultdict(partial(deque, maxlen=max_baskets))

    def learn(self, baskets: Iterable[Basket]) -> None:
        for basket in baskets:
            self._baskets[basket.user_id].append(basket.items)

    def recent(self, user_id: str) -> list[tuple[int, ...]]:
        return list(self._baskets.get(user_id, ()))


def recency_weights(baskets: Sequence[Sequence[int]], decay: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Items of a shopper's recent baskets (oldest first) with weight ``decay ** age``, age 0 = newest.

    An item in several baskets sums its weights.

    >>> items, weights = recency_weights([(0, 1), (1,)], decay=0.5)
    >>> items.tolist(), weights.tolist()
    ([0, 1], [0.5, 1.5])
    """
    total: dict[int, float] = {}
    for position, basket in enumerate(baskets):
        age = len(baskets) - 1 - position
        for item in basket:
            total[item] = total.get(item, 0.0) + decay**age
    items = np.fromiter(total.keys(), dtype=np.int64, count=len(total))
    return items, np.fromiter(total.values(), dtype=np.float64, count=len(total))


class CoOccurrence:
    """How often two items are bought in one basket, with cosine-normalised kNN scores.

    ``counts[i, j]`` is the number of baskets holding both ``i`` and ``j`` (the diagonal: baskets
    holding ``i``); similarity is ``counts[i, j] / sqrt(counts[i, i] * counts[j, j])``. Dense float32:
    the catalogue is a few thousand items (4k items = 64 MB).

    >>> co = CoOccurrence()
    >>> co.learn([Basket("a", 0.0, (0, 1), "i"), Basket("b", 0.0, (0, 2), "j"), Basket("c", 0.0, (0, 1), "k")])
    >>> co.similarity([1], np.arange(3)).round(3).tolist()
    [[0.816, 0.0, 0.0]]
    >>> co.knn_scores(np.array([1, 2]), np.array([1.0, 1.0]), np.arange(3)).round(3).tolist()
    [1.394, 0.0, 0.0]
    """

    def __init__(self) -> None:
        self._counts = np.zeros((0, 0), dtype=np.float32)
        self.n_items = 0

    def learn(self, baskets: Iterable[Basket]) -> None:
        for basket in baskets:
            items = np.asarray(basket.items, dtype=np.int64)
            if len(items) == 0:
                continue
            self.n_items = max(self.n_items, int(items.max()) + 1)
            self._counts = grown(self._counts, self.n_items)
            self._counts[np.ix_(items, items)] += 1.0

    def similarity(self, items: Sequence[int] | np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Cosine similarity of each of ``items`` (rows) to each candidate (columns); an item to itself is 0."""
        items = np.asarray(items, dtype=np.int64)
        inverse_norms = self._inverse_norms()
        rows = self._rows(items, candidates) * gather(inverse_norms, items)[:, None]
        rows *= gather(inverse_norms, candidates)[None, :]
        rows[items[:, None] == candidates[None, :]] = 0.0
        return rows

    def knn_scores(self, items: np.ndarray, weights: np.ndarray, candidates: np.ndarray,
                   neighbours: int | None = None) -> np.ndarray:
        """Sum over the shopper's ``items`` of ``weight * similarity``, each item voting for its top neighbours.

        ``neighbours=None`` lets every co-bought item vote (one vector-matrix product, the fast path);
        an int keeps only each item's ``neighbours`` most similar candidates, the classic kNN.
        """
        if len(items) == 0:
            return np.zeros(len(candidates))
        if neighbours is not None and neighbours < len(candidates):
            sims = self.similarity(items, candidates)
            weakest = np.argpartition(-sims, neighbours, axis=1)[:, neighbours:]
            np.put_along_axis(sims, weakest, 0.0, axis=1)
            return weights @ sims
        # sum_i w_i * c_ij / (|i| |j|), minus each item's vote for itself (c_ii / |i|^2 = 1)
        inverse_norms = self._inverse_norms()
        votes = (weights * gather(inverse_norms, items)) @ self._rows(items, candidates)
        votes *= gather(inverse_norms, candidates)
        votes -= sparse_to_candidates(items, weights * (gather(inverse_norms, items) > 0), candidates)
        return np.maximum(votes, 0.0, out=votes)  # no rounding-error negatives

    def _rows(self, items: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``counts[items][:, candidates]`` as float64, zeros for items or candidates not learned yet."""
        rows = np.zeros((len(items), len(candidates)))
        known_items = items < self.n_items
        known_candidates = candidates < self.n_items
        if not known_items.any() or not known_candidates.any():
            return rows
        if is_prefix(candidates):  # the whole catalogue: a contiguous slice, much faster than fancy indexing
            width = min(len(candidates), self.n_items)
            rows[known_items, :width] = self._counts[items[known_items], :width]
        else:
            rows[np.ix_(known_items, known_candidates)] = self._counts[np.ix_(items[known_items],
                                                                               candidates[known_candidates])]
        return rows

    def _inverse_norms(self) -> np.ndarray:
        """1 / sqrt(baskets holding the item), 0 for items in no basket."""
        holding = np.diagonal(self._counts)[: self.n_items].astype(np.float64)
        return np.divide(1.0, np.sqrt(holding), out=np.zeros_like(holding), where=holding > 0)


# --------------------------------------------------------------------------- recommenders


class PopularityRecommender:
    """Everyone gets the items most bought in the last 30 days of event time."""

    def __init__(self, window_days: float = 30.0, name: str = "popularity") -> None:
        self.name = name
        self.popularity = RecentPopularity(window_days)

    def learn(self, baskets: list[Basket]) -> None:
        self.popularity.learn(baskets)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return self.popularity.scores(candidates)


class RepeatRecommender:
    """What the shopper bought before, the more often and recently the higher (half-life in days)."""

    def __init__(self, half_life_days: float = 90.0, name: str = "repeat") -> None:
        self.name = name
        self.repeat = RepeatScorer(half_life_days)

    def learn(self, baskets: list[Basket]) -> None:
        self.repeat.learn(baskets)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return self.repeat.scores(user_id, candidates)


class ItemKNNRecommender:
    """Items bought together with what the shopper bought in the last few baskets."""

    def __init__(self, recent_baskets: int = 3, basket_decay: float = 0.7, neighbours: int | None = None,
                 name: str = "item_knn") -> None:
        self.name = name
        self.basket_decay = basket_decay
        self.neighbours = neighbours
        self.history = ShopperHistory(recent_baskets)
        self.cooccurrence = CoOccurrence()

    def learn(self, baskets: list[Basket]) -> None:
        self.history.learn(baskets)
        self.cooccurrence.learn(baskets)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        items, weights = recency_weights(self.history.recent(user_id), self.basket_decay)
        return self.cooccurrence.knn_scores(items, weights, candidates, self.neighbours)


class RepeatKNNRecommender:
    """A blend of the two: ``repeat / max + knn_weight * knn / max``, each scaled over the whole catalogue."""

    def __init__(self, half_life_days: float = 90.0, knn_weight: float = 0.5, recent_baskets: int = 3,
                 basket_decay: float = 0.7, neighbours: int | None = None, name: str = "repeat_knn") -> None:
        self.name = name
        self.knn_weight = knn_weight
        self.repeat = RepeatRecommender(half_life_days)
        self.knn = ItemKNNRecommender(recent_baskets, basket_decay, neighbours)

    def learn(self, baskets: list[Basket]) -> None:
        self.repeat.learn(baskets)
        self.knn.learn(baskets)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        # scaled over the whole catalogue, so a candidate's score does not depend on the other candidates
        catalogue = np.arange(max(self.knn.cooccurrence.n_items, int(candidates.max(initial=-1)) + 1))
        repeat = scaled_to_max(self.repeat.score(user_id, catalogue))
        knn = scaled_to_max(self.knn.score(user_id, catalogue))
        return (repeat + self.knn_weight * knn)[candidates]


class BiasedMFRecommender:
    """river's online ``reco.BiasedMF`` on implicit feedback: bought = 1, a random seen item = 0.

    Each learned (shopper, item) pair is followed by ``negatives`` uniformly sampled unbought items.
    This is the slow baseline: river's ``learn_one`` costs ~37 us, and the whole file is ~1.9 M of them
    (~70 s on one core). ``learn_fraction < 1`` learns only that share of the baskets (a seeded coin)
    when that is too slow -- at a price: with 2 negatives, learning a quarter of them took test NDCG@10
    from .122 to .079.
    Scoring reads river's weights into numpy arrays, refreshing only the items learned since.
    """

    def __init__(self, n_factors: int = 16, negatives: int = 4, learn_fraction: float = 1.0,
                 learning_rate: float = 0.05, l2: float = 0.001, seed: int = 42, name: str = "biased_mf") -> None:
        from river import optim, reco  # imported here: river is heavy and only this model needs it

        self.name = name
        self.negatives = negatives
        self.learn_fraction = learn_fraction
        self.model = reco.BiasedMF(n_factors=n_factors, bias_optimizer=optim.SGD(learning_rate / 5),
                                   latent_optimizer=optim.SGD(learning_rate), l2_bias=l2, l2_latent=l2,
                                   latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
                                   seed=seed)
        self._rng = random.Random(seed)
        self._n_items = 0
        self._item_bias = np.zeros(0)
        self._item_latent = np.zeros((0, n_factors))
        self._stale_items: set[int] = set()

    def learn(self, baskets: list[Basket]) -> None:
        for basket in baskets:
            self._n_items = max(self._n_items, max(basket.items, default=-1) + 1)
            if self._rng.random() >= self.learn_fraction:
                continue
            bought = set(basket.items)
            for item in basket.items:
                self._learn_pair(basket.user_id, item, 1.0)
                for _ in range(self.negatives):
                    other = self._rng.randrange(self._n_items)
                    if other not in bought:
                        self._learn_pair(basket.user_id, other, 0.0)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        self._refresh_item_arrays()
        user_latent = self.model.u_latents.get(user_id)
        scores = gather(self._item_bias, candidates) + self.model.u_biases.get(user_id, 0.0)
        if user_latent is not None:
            known = candidates < len(self._item_bias)
            scores[known] += self._item_latent[candidates[known]] @ user_latent
        return scores

    def _learn_pair(self, user_id: str, item: int, bought: float) -> None:
        self.model.learn_one(user=user_id, item=item, y=bought)
        self._stale_items.add(item)

    def _refresh_item_arrays(self) -> None:
        if not self._stale_items:
            return
        size = max(self._stale_items) + 1
        self._item_bias = grown(self._item_bias, size)
        if self._item_latent.shape[0] < len(self._item_bias):
            latent = np.zeros((len(self._item_bias), self._item_latent.shape[1]))
            latent[: self._item_latent.shape[0]] = self._item_latent
            self._item_latent = latent
        for item in self._stale_items:
            self._item_bias[item] = self.model.i_biases[item]
            self._item_latent[item] = self.model.i_latents[item]
        self._stale_items.clear()
