"""Served quality, live: every list serving showed, joined with the shopper's next basket.

The headline ranking figures of the running system. Each impression (shopper, event time ``ts``,
``model_version``, items in order) waits for that shopper's **next basket**: their purchases at one
timestamp ``T`` with ``ts <= T <= ts + window_s`` (default 7 days). A basket is complete when event
time passes ``T``; the served list is then scored against the basket's distinct items with the
offline protocol's metrics (:mod:`learner.ranking_metrics`: HR@10, NDCG@10, Recall@10). Beside it,
on the same impression, the **repeat baseline** is scored: the shopper's own recency-decayed purchase
counts (the ``repeat`` column of :class:`~learner.features.BehaviourFeatures`, half-life 90 days),
as of the impression's event time, nothing excluded, ties broken by 30-day popularity and then by
the order items were first seen (the offline protocol's tie-break), and as many items as serving
showed (at most ``k``). ``lift_over_repeat`` is the **difference** served − repeat NDCG@10 over the
same impressions: paired, additive over impressions, and defined when repeat scores 0.

Choices, and why:

* **Only impressions followed by a basket count** in ``hr``/``ndcg``/``recall`` (and their repeat
  twins): offline next-basket NDCG counts only baskets that happened, so this is the figure to put
  beside it. ``followed_share`` is the share of closed impressions that were followed within the
  window; an impression never followed counts there as a miss, and ``ndcg × followed_share`` is the
  figure that scores it 0.
* **Every impression counts**, not only the last before a basket: an impression is what was served,
  and its score must not depend on whether the shopper asked again later (a reload would otherwise
  erase the earlier list of another model version). Each is scored against the same next basket,
  with its own repeat list as of its own event time, so the lift stays paired. The simulated shoppers
  of ``recloop demo`` ask once per visit, so there the two readings coincide.
* A basket at exactly the impression's ``ts`` follows it: the demo's shoppers ask just before buying,
  at the visit's event time; a live visit's purchases come after its request anyway.
* **Event time only**: impressions carry the event time of the visit (``GET /recommend?ts=``), so a
  replay joins as the live run did, however far its event time is from the wall clock.

Impressions and interactions travel on different topics, which a worker reads at different paces,
so the join does not trust arrival order:

* the shopper's repeat state is kept *per shopper as of any event time inside a grace period*:
  baskets younger than ``grace_s`` (behind the latest event time seen) stay pending, so an
  impression that arrives after baskets that followed it still sees exactly the baskets before its
  ``ts``; a basket before ``ts`` that arrives after the impression makes its repeat list be computed
  again. An impression older than a basket of the same shopper that already settled cannot be
  reconstructed and is counted in ``unjoined{reason=late}``;
* popularity (only the tie-break and the fill for shoppers with fewer than ``k`` past items) is
  global state as of ``grace_s`` behind event time when the repeat list is computed, not exactly as of
  ``ts``: an approximation of a few hours of a 30-day window at most;
* an impression with no basket closes when event time passes ``ts + window_s + grace_s``.

State is bounded: open impressions are capped at ``max_open`` (beyond, the oldest is dropped and
counted in ``unjoined{reason=overflow}``), per-version figures are kept for the ``max_versions``
most recently scored versions, and a shopper's state is one weight per item they ever bought (as in
:class:`~learner.baselines.RepeatScorer`).

>>> from streams.records import Impression, Interaction, RecommendedItem
>>> q = ServedQuality()
>>> day = 86_400.0
>>> for i, (user, item, ts) in enumerate([("u1", "A", 1.3e9), ("u2", "B", 1.3e9), ("u2", "C", 1.3e9 + day)]):
...     q.learn_one(Interaction(f"e{i}", user, item, "purchase", ts))
>>> q.show(Impression("r1", "u1", 1.3e9 + 2 * day, "v1", (RecommendedItem("B", 0.9), RecommendedItem("A", 0.5))))
True
>>> q.learn_one(Interaction("e3", "u1", "A", "purchase", 1.3e9 + 3 * day))
>>> q.learn_one(Interaction("e4", "u2", "C", "click", 1.3e9 + 3 * day + 1))  # event time passes the basket
>>> s = {(m.name, m.labels.get("model_version")): round(m.value, 4) for m in q.snapshot(1.7e9)}
>>> s["served.ndcg_at_10", "v1"], s["served.repeat_ndcg_at_10", "v1"], s["served.lift_over_repeat", "v1"]
(0.6309, 1.0, -0.3691)
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from river import stats, utils

from learner.baselines import DAY, RecentPopularity
from learner.baskets import Basket, ItemIndex
from learner.ranking_metrics import K, hit_rate_at_k, ndcg_at_k, recall_at_k
from streams.records import Impression, Interaction, MetricSnapshot

PURCHASE = "purchase"
#: The label value of the figures over every model version.
ALL_VERSIONS = "all"


@dataclass(eq=False)
class _Shown:
    """An open impression: what was served, and the repeat baseline's list for the same moment."""

    rec_id: str
    user_id: str
    ts: float
    model_version: str
    items: tuple[str, ...]
    repeat: tuple[str, ...] = ()


@dataclass(eq=False)
class _Basket:
    items: dict[str, None] = field(default_factory=dict)
    complete: bool = False


@dataclass(eq=False)
class _Shopper:
    """One shopper's repeat state: settled weights as of ``as_of``, and the baskets still pending."""

    weights: dict[str, float] = field(default_factory=dict)
    as_of: float = -math.inf
    pending: dict[float, _Basket] = field(default_factory=dict)
    waiting: list[_Shown] = field(default_factory=list)


class _Tally:
    """Rolling figures of one model version (or of all): paired served and repeat scores."""

    FIGURES = ("hr", "ndcg", "recall")

    def __init__(self, window: int) -> None:
        self.served = {name: utils.Rolling(stats.Mean(), window_size=window) for name in self.FIGURES}
        self.repeat = {name: utils.Rolling(stats.Mean(), window_size=window) for name in self.FIGURES}
        self.followed_share = utils.Rolling(stats.Mean(), window_size=window)
        self.closed = 0
        self.followed = 0

    def add(self, served: dict[str, float] | None, repeat: dict[str, float] | None) -> None:
        self.closed += 1
        self.followed_share.update(float(served is not None))
        if served is None or repeat is None:
            return
        self.followed += 1
        for name in self.FIGURES:
            self.served[name].update(served[name])
            self.repeat[name].update(repeat[name])


def score_list(items: tuple[str, ...], basket: set[str], k: int = K) -> dict[str, float]:
    """HR@k, NDCG@k and Recall@k of a shown list against a basket's distinct items.

    >>> {name: round(v, 4) for name, v in score_list(("A", "B", "C"), {"C", "D"}).items()}
    {'hr': 1.0, 'ndcg': 0.3066, 'recall': 0.5}
    """
    ranks = np.array([rank for rank, item in enumerate(items[:k]) if item in basket], dtype=np.float64)
    n_targets = len(basket)
    return {"hr": hit_rate_at_k(ranks, k), "ndcg": ndcg_at_k(ranks, n_targets, k),
            "recall": recall_at_k(ranks, n_targets, k)}


class ServedQuality:
    """The impression ⇄ next-basket join, and the served and repeat figures it produces (module docstring).

    Parameters
    ----------
    k
        The cut-off of every figure; a served list is read up to ``k`` items.
    window_s
        How long after an impression (event time) the shopper's next basket still follows it.
    grace_s
        How far event time may run ahead of an impression that still joins exactly (skew between topics).
    window
        Followed impressions (closed impressions for ``followed_share``) each rolling figure summarises.
    half_life_days, popularity_days
        The repeat baseline's half-life and the popularity window of its tie-break, as in
        :class:`~learner.features.BehaviourFeatures`.
    """

    def __init__(self, *, k: int = K, window_s: float = 7 * DAY, grace_s: float = 600.0, window: int = 1000,
                 half_life_days: float = 90.0, popularity_days: float = 30.0, max_open: int = 10_000,
                 max_versions: int = 20) -> None:
        self.k = k
        self.window_s = window_s
        self.grace_s = grace_s
        self.window = window
        self.half_life_s = half_life_days * DAY
        self.popularity_days = popularity_days
        self.max_open = max_open
        self.max_versions = max_versions
        self._reset()

    def _reset(self) -> None:
        self.clock = -math.inf  # event time of the interactions
        self._shoppers: dict[str, _Shopper] = {}
        self._index = ItemIndex()
        self._popularity = RecentPopularity(self.popularity_days)
        self._incomplete: list[tuple[float, str]] = []  # heap of pending baskets not yet complete
        self._settling: list[tuple[float, str]] = []  # heap of complete baskets not yet settled
        self._open: OrderedDict[str, _Shown] = OrderedDict()  # in arrival order
        self._deadlines: list[tuple[float, int, str]] = []  # heap: (ts + window_s, seq, rec_id)
        self._seq = itertools.count()
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent rec_ids: a redelivery is shown once
        self.overall = _Tally(self.window)
        self.versions: OrderedDict[str, _Tally] = OrderedDict()
        self.unjoined = {"late": 0, "overflow": 0}

    # ------------------------------------------------------------------ impressions

    def show(self, impression: Impression) -> bool:
        """Open an impression; False when it is not joined (a redelivery, an empty list, too late, or a list of
        another route: a search's or a product page's list answers a query, not "what next", so it is not
        scored against the next basket)."""
        if impression.rec_id in self._seen or not impression.items or impression.route != "recommend":
            return False
        self._seen[impression.rec_id] = None
        while len(self._seen) > 2 * self.max_open:
            self._seen.popitem(last=False)
        shopper = self._shoppers.get(impression.user_id) or _Shopper()
        if impression.ts <= shopper.as_of:  # a basket at or after it has settled: its state is gone
            self.unjoined["late"] += 1
            return False
        shown = _Shown(impression.rec_id, impression.user_id, impression.ts, impression.model_version,
                       tuple(item.item_id for item in impression.items[:self.k]))
        shown.repeat = self.repeat_list(impression.user_id, impression.ts, len(shown.items))
        following = [ts for ts in shopper.pending if shown.ts <= ts <= shown.ts + self.window_s]
        if following and shopper.pending[min(following)].complete:  # its next basket came first
            self._close(shown, set(shopper.pending[min(following)].items))
            return True
        self._shoppers[shown.user_id] = shopper  # a visitor who never bought is kept only while waiting
        shopper.waiting.append(shown)
        self._open[shown.rec_id] = shown
        heapq.heappush(self._deadlines, (shown.ts + self.window_s, next(self._seq), shown.rec_id))
        while len(self._open) > self.max_open:
            _, dropped = self._open.popitem(last=False)
            self._stop_waiting(dropped)
            self.unjoined["overflow"] += 1
        return True

    def repeat_list(self, user_id: str, ts: float, n: int) -> tuple[str, ...]:
        """The repeat baseline's top ``n`` for ``user_id`` from every basket strictly before ``ts``."""
        if n <= 0:
            return ()
        shopper = self._shoppers.get(user_id)
        weights: dict[str, float] = {}
        if shopper is not None:
            if shopper.weights:
                decay = 0.5 ** ((ts - shopper.as_of) / self.half_life_s)
                weights = {item: w * decay for item, w in shopper.weights.items()}
            for basket_ts, basket in shopper.pending.items():
                if basket_ts < ts:
                    gain = 0.5 ** ((ts - basket_ts) / self.half_life_s)
                    for item in basket.items:
                        weights[item] = weights.get(item, 0.0) + gain
        counts = self._popularity.scores(np.arange(len(self._index)))

        def popularity(item: str) -> float:
            position = self._index.index_of(item)
            return counts[position] if 0 <= position < len(counts) else 0.0

        ranked = sorted(weights, key=lambda item: (-weights[item], -popularity(item), self._index.index_of(item)))
        out = ranked[:n]
        if len(out) < n and len(counts):  # fill with the most popular items the shopper never bought
            m = min(len(counts), n + len(weights))
            key = counts * len(counts) + (len(counts) - 1 - np.arange(len(counts)))  # popularity, then older first
            top = np.argpartition(-key, m - 1)[:m] if m < len(counts) else np.arange(len(counts))
            for position in top[np.argsort(-key[top])].tolist():
                code = self._index.code_of(position)
                if code not in weights:
                    out.append(code)
                    if len(out) == n:
                        break
        return tuple(out)

    # ------------------------------------------------------------------ interactions

    def learn_one(self, interaction: Interaction) -> None:
        """Move event time on with any interaction; purchases build baskets, which close impressions."""
        current = (interaction.ts, interaction.user_id) if interaction.type == PURCHASE else None
        self._advance(interaction.ts, current)
        if current is None:
            return
        shopper = self._shopper(interaction.user_id)
        basket = shopper.pending.get(interaction.ts)
        if basket is None:
            basket = shopper.pending[interaction.ts] = _Basket()
            heapq.heappush(self._incomplete, current)
        basket.items[interaction.item_id] = None
        self._index.add(interaction.item_id)

    def flush(self) -> None:
        """Complete every pending basket (the end of a replay); impressions inside their window stay open."""
        for ts, user in self._incomplete:
            self._complete(ts, user)
        self._incomplete.clear()

    def _advance(self, now: float, current: tuple[float, str] | None) -> None:
        self.clock = max(self.clock, now)
        held = []
        while self._incomplete and self._incomplete[0][0] < self.clock:
            key = heapq.heappop(self._incomplete)
            if key == current:  # the line being learned belongs to it: not complete yet
                held.append(key)
            else:
                self._complete(*key)
        for key in held:
            heapq.heappush(self._incomplete, key)
        while self._deadlines and self._deadlines[0][0] + self.grace_s < self.clock:
            _, _, rec_id = heapq.heappop(self._deadlines)
            shown = self._open.pop(rec_id, None)
            if shown is not None:
                self._stop_waiting(shown)
                self._close(shown, None)
        while self._settling and self._settling[0][0] < self.clock - self.grace_s:
            self._settle(*heapq.heappop(self._settling))

    def _complete(self, ts: float, user_id: str) -> None:
        """The basket ``(user_id, ts)`` is complete: it closes the impressions it follows."""
        shopper = self._shoppers[user_id]
        basket = shopper.pending[ts]
        basket.complete = True
        heapq.heappush(self._settling, (ts, user_id))
        still_waiting = []
        for shown in shopper.waiting:
            if shown.ts <= ts <= shown.ts + self.window_s:
                self._open.pop(shown.rec_id, None)
                self._close(shown, set(basket.items))
                continue
            if ts < shown.ts:  # a basket before the impression arrived after it: its repeat list changes
                shown.repeat = self.repeat_list(user_id, shown.ts, len(shown.items))
            still_waiting.append(shown)
        shopper.waiting = still_waiting

    def _settle(self, ts: float, user_id: str) -> None:
        """Fold a basket older than the grace into the shopper's weights and the popularity."""
        shopper = self._shoppers[user_id]
        basket = shopper.pending.pop(ts)
        if ts >= shopper.as_of:
            decay = 0.5 ** ((ts - shopper.as_of) / self.half_life_s) if shopper.weights else 1.0
            for item in shopper.weights:
                shopper.weights[item] *= decay
            gain, shopper.as_of = 1.0, ts
        else:
            gain = 0.5 ** ((shopper.as_of - ts) / self.half_life_s)
        for item in basket.items:
            shopper.weights[item] = shopper.weights.get(item, 0.0) + gain
        self._popularity.learn([Basket(user_id, ts, tuple(self._index.add(item) for item in basket.items), "")])

    def _stop_waiting(self, shown: _Shown) -> None:
        shopper = self._shoppers[shown.user_id]
        shopper.waiting.remove(shown)
        if not (shopper.waiting or shopper.pending or shopper.weights):
            del self._shoppers[shown.user_id]

    def _shopper(self, user_id: str) -> _Shopper:
        shopper = self._shoppers.get(user_id)
        if shopper is None:
            shopper = self._shoppers[user_id] = _Shopper()
        return shopper

    def _close(self, shown: _Shown, basket: set[str] | None) -> None:
        """Count a closed impression: scored against ``basket``, or not followed (None)."""
        served = score_list(shown.items, basket, self.k) if basket is not None else None
        repeat = score_list(shown.repeat, basket, self.k) if basket is not None else None
        self.overall.add(served, repeat)
        tally = self.versions.pop(shown.model_version, None) or _Tally(self.window)
        self.versions[shown.model_version] = tally  # most recently scored last
        tally.add(served, repeat)
        while len(self.versions) > self.max_versions:
            self.versions.popitem(last=False)

    # ------------------------------------------------------------------ reading

    @property
    def open_impressions(self) -> int:
        return len(self._open)

    def snapshot(self, ts: float) -> list[MetricSnapshot]:
        """The served figures per model version (and ``model_version="all"``) as metric records."""
        out: list[MetricSnapshot] = []

        def add(name: str, value: float, window: int, **labels: str) -> None:
            if math.isfinite(value):
                out.append(MetricSnapshot(name=f"served.{name}", value=float(value), window=window, ts=ts,
                                          labels=labels))

        at = f"_at_{self.k}"
        for version, tally in [(ALL_VERSIONS, self.overall), *reversed(self.versions.items())]:
            n = len(tally.served["ndcg"].window)
            if n:
                for name in _Tally.FIGURES:
                    add(f"{name}{at}", tally.served[name].get(), n, model_version=version)
                for name in _Tally.FIGURES:
                    add(f"repeat_{name}{at}", tally.repeat[name].get(), n, model_version=version)
                add("lift_over_repeat", tally.served["ndcg"].get() - tally.repeat["ndcg"].get(), n,
                    model_version=version)
            closed = len(tally.followed_share.window)
            if closed:
                add("followed_share", tally.followed_share.get(), closed, model_version=version)
            add("impressions", tally.closed, 0, model_version=version)
            add("followed", tally.followed, 0, model_version=version)
        add("open_impressions", len(self._open), 0)
        for reason, count in self.unjoined.items():
            add("unjoined", count, 0, reason=reason)
        return out
