"""Behavioural features from the live stream: what a shopper bought, what is bought together, what is popular.

The same object serves three places — the worker's example builder, every serving worker, and
``recloop eval`` — so a score means the same thing wherever it is computed. It learns from
single interaction events (the stream carries invoice lines, not baskets) and assembles them
into baskets itself: a basket is one shopper's purchases at one timestamp, and it is learned
once event time has moved past that timestamp. Scoring therefore only ever sees baskets from
strictly earlier timestamps, which is the prequential protocol's rule.

Returns and non-purchase events (views, clicks, add-to-cart) do not change these features;
the trainer uses them as labels instead.

**Basket assembly.** Invoice lines reach a consumer interleaved across the partitions of the
interactions topic (keyed by shopper); within one partition they arrive in event-time order. A
caller that knows where an event was read passes its ``source`` (the partition) to
:meth:`BehaviourFeatures.learn_interaction`, and baskets are then closed per source:

* *complete*: a basket read from source ``p`` has all its lines once an event of ``p`` with a later
  timestamp arrives (its shopper's own later event is one of those) — however far other partitions
  ran ahead, so a basket is never split into fragments;
* *in order*: complete baskets are learned oldest first, when the **watermark** passes them: the
  oldest clock (newest timestamp seen) over the sources that are not quiet. No basket older than
  the watermark can still come, so baskets are held out and learned in timestamp order, as the
  offline evaluation does — a partition a day behind the others holds their baskets back rather
  than letting them be learned before its own (only a source not seen yet can bring older ones);
* *quiet sources* (the lateness fallback): a source is quiet once it has been absent for a few whole
  rounds of the interleaving — the last (sources seen) × max(:data:`QUIET_ROUNDS`, 2 × the longest
  run of consecutive events from one source seen so far, counted up to :data:`LONGEST_RUN`) events —
  **and** every source that delivered events since it last did has moved its own clock on by more
  than ``lateness_s`` since then: the stream went on by ``lateness_s`` of event time, on every
  partition that spoke, while this one said nothing. Both are needed. Event time alone cannot tell a
  silent partition from fast ones: in a replay the other partitions may move on by more than
  ``lateness_s`` within a few records (one record may cross a night's or a holiday's gap). And
  consumers interleave at different grains: Faust round-robins the partitions of one fetch record by
  record, but one fetch may hold only one partition (up to 500 records, a day of a replay's event
  time), so absence is measured in rounds of the coarsest interleaving seen — a run of one partition
  of up to :data:`LONGEST_RUN` events never makes another quiet by itself (a longer one is a
  partition talking alone, not one fetch, and does). A partition that lags but keeps delivering is
  never quiet, however far behind it is. A quiet source stops holding the watermark back, and its
  last basket (the one waiting for the source's next event) is closed once the watermark passes it.
  Only event time and the order of records count, never the wall clock, so the state stays a
  function of the input records (a restarted learner replays to the same state).

Without a ``source`` (one ordered stream: the offline evaluation, tests) a basket is complete when
its shopper's own later event arrives, or when any event's time is ``lateness_s`` past it.
An explicit watermark (:meth:`BehaviourFeatures.advance_to`, a serving request's event time)
closes everything before it in both modes.

>>> f = BehaviourFeatures()
>>> for ts, item in [(0.0, "A"), (0.0, "B"), (86400.0, "A"), (2 * 86400.0, "C")]:
...     f.learn_interaction("u1", item, "purchase", ts)
>>> f.history("u1")
(1, 0)
>>> f.matrix("u1", np.arange(3)).astype(float).round(3).tolist()
[[1.096, 0.412, 1.0], [0.689, 1.0, 0.631], [0.0, 0.0, 0.0]]
>>> [(f.index.code_of(item), round(w, 3)) for item, w in f.evidence("u1", 0)]
[('A', 1.992), ('B', 0.495)]
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from learner.baselines import CoOccurrence, RecentPopularity, RepeatScorer, ShopperHistory, recency_weights
from learner.baskets import Basket, ItemIndex

#: Columns of :meth:`BehaviourFeatures.matrix` (the ranking model reads the richer
#: :data:`learner.rich_features.FEATURE_NAMES`; these three serve baselines and the online metrics).
BASIC_COLUMNS = ("repeat", "knn", "popularity")

PURCHASE = "purchase"

#: How long (event time, seconds) a basket waits for more of its lines once *other* shoppers' later events
#: arrive. Partitions reach a consumer interleaved, so another shopper's later event does not prove a basket
#: complete; the shopper's own later event does (a shopper's events share a partition). A replay delivers
#: hours of event time per fetch: replays set it higher (``RECLOOP_BASKET_LATENESS_S``). With event sources
#: known, it is only how far the stream may move on while a source is silent before that source counts as quiet
#: (module docstring, "Basket assembly").
BASKET_LATENESS_S = 600.0

#: A source can be quiet only once it is absent from at least this many rounds of the interleaving (module
#: docstring, "Basket assembly"): partitions interleaved record by record, one that still delivers appears
#: about once a round.
QUIET_ROUNDS = 8

#: The longest run of consecutive events of one partition a consumer hands over as one fetch (Faust's
#: ``broker_max_poll_records`` is 500; serving reads in turns of 50). Runs count up to this length when
#: measuring the rounds of the interleaving, so a partition that goes on alone still silences the others.
LONGEST_RUN = 1000


class BehaviourFeatures:
    """Online repeat, co-purchase and popularity state, and the feature matrix the ranking model reads.

    Columns of :meth:`matrix` (one row per candidate):

    - ``repeat``: ``log1p`` of the shopper's recency-decayed purchase count of the item
      (half-life ``half_life_days``) — the strongest single signal on this kind of data;
    - ``knn``: co-purchase kNN score from the shopper's last ``recent_baskets`` baskets, scaled to [0, 1];
    - ``popularity``: ``log1p`` of baskets buying the item in the last ``window_days``, scaled to [0, 1].
    """

    def __init__(self, index: ItemIndex | None = None, *, half_life_days: float = 90.0, recent_baskets: int = 3,
                 basket_decay: float = 0.7, window_days: float = 30.0, history_baskets: int = 20,
                 lateness_s: float = BASKET_LATENESS_S) -> None:
        self.index = index if index is not None else ItemIndex()
        self.lateness_s = lateness_s
        self.basket_decay = basket_decay
        self.repeat = RepeatScorer(half_life_days)
        self.cooccurrence = CoOccurrence()
        self.popularity = RecentPopularity(window_days)
        self.recent = ShopperHistory(recent_baskets)
        self.long_history = ShopperHistory(history_baskets)
        self.clock = -math.inf
        #: Called with the baskets of one timestamp once they are complete and *before* they are learned
        #: (the online ranker holds them out there: test, then train).
        self.before_learn: Callable[[list[Basket]], None] | None = None
        #: baskets still open: timestamp -> shopper -> items in first-seen order
        self._open: dict[float, dict[str, dict[int, None]]] = defaultdict(dict)
        self._open_invoice: dict[tuple[float, str], str] = {}
        self._open_ts_of: dict[str, set[float]] = {}  # shopper -> timestamps of their open baskets
        self._init_sources()

    def _init_sources(self) -> None:
        """State of per-source basket assembly (events learned with a ``source``)."""
        #: source -> the newest timestamp it delivered, and the first one
        self._source_clock: dict[int, float] = {}
        self._source_first: dict[int, float] = {}
        #: source -> the number (1, 2, ...) of the last event it delivered, counting events with a source
        self._source_seq: dict[int, int] = {}
        self._seq = 0
        #: source -> every source's clock when it last delivered an event (how far the others moved on since)
        self._clocks_when_heard: dict[int, dict[int, float]] = {}
        #: the source of the last event, how many consecutive events it delivered, and the longest such run
        self._run_source: int | None = None
        self._run = 0
        self._longest_run = 0
        #: timestamps that may have open baskets (a min-heap; stale entries are skipped when popped)
        self._open_heap: list[float] = []

    def __getstate__(self) -> dict:
        """Pickled without :attr:`before_learn`: the hook is wiring of the process that runs it, not state."""
        return {**self.__dict__, "before_learn": None}

    def __setstate__(self, state: dict) -> None:
        """A checkpoint written before per-source baskets existed loads with no sources seen yet (its open baskets
        are closed by the watermark like any other)."""
        self._init_sources()
        self.__dict__.update(state)
        if "_open_heap" not in state:
            self._open_heap = sorted(self._open)

    # ------------------------------------------------------------------ learning

    def add_item(self, item_id: str) -> int:
        return self.index.add(item_id)

    def learn_interaction(self, user_id: str, item_id: str, type: str, ts: float,
                          basket_id: str | None = None, source: int | None = None) -> None:
        """Learn one event. Purchases join the shopper's basket at ``ts``.

        ``source`` is where the event was read (the partition of the interactions topic; events of one
        source arrive in timestamp order). With it, a basket is complete once its source delivers a later
        event, and complete baskets are learned in timestamp order (the module docstring, "Basket
        assembly"). Without it, the shopper's own earlier baskets are complete now; other shoppers' once
        event time is ``lateness_s`` past them (see :data:`BASKET_LATENESS_S`). One stream uses one mode.

        >>> f = BehaviourFeatures(lateness_s=600)
        >>> f.learn_interaction("a", "X", "purchase", 0.0); f.learn_interaction("b", "Y", "purchase", 60.0)
        >>> f.learn_interaction("a", "Z", "purchase", 0.0)  # a late line of a's basket: still one basket
        >>> f.learn_interaction("a", "X", "purchase", 120.0); f.history("a"), f.knows("b")
        ((0, 2), False)

        Partition 1 two days ahead of partition 0 (both delivering): partition 0's basket waits for its last
        line, and partition 1's baskets wait until partition 0 has caught up with them.

        >>> f = BehaviourFeatures(lateness_s=600)
        >>> f.learn_interaction("b", "Y", "purchase", 2 * 86400.0, source=1)
        >>> f.learn_interaction("a", "X", "purchase", 0.0, source=0)
        >>> f.learn_interaction("b", "Y", "purchase", 2 * 86400.0 + 60, source=1)
        >>> f.learn_interaction("a", "Z", "purchase", 0.0, source=0); f.knows("a")
        False
        >>> f.learn_interaction("c", "X", "purchase", 60.0, source=0); f.history("a"), f.knows("b")
        ((1, 2), False)
        """
        if source is not None:
            self._learn_sourced(user_id, item_id, type, ts, basket_id, source)
            return
        self.advance_to(ts - self.lateness_s)
        own = self._open_ts_of.get(user_id)
        if own and min(own) < ts:
            self._close([(t, user_id) for t in own if t < ts])
        self.clock = max(self.clock, ts)
        if type != PURCHASE:
            return
        self._open_line(user_id, item_id, ts, basket_id)

    def _open_line(self, user_id: str, item_id: str, ts: float, basket_id: str | None) -> None:
        """A purchase line joins the open basket ``(ts, user_id)``."""
        item = self.index.add(item_id)
        self._open[ts].setdefault(user_id, {})[item] = None
        self._open_ts_of.setdefault(user_id, set()).add(ts)
        self._open_invoice.setdefault((ts, user_id), basket_id or "")

    def _learn_sourced(self, user_id: str, item_id: str, type: str, ts: float, basket_id: str | None,
                       source: int) -> None:
        """One event read from ``source``: move the source's clock, then close what the watermark passed."""
        clocks = self._source_clock
        clocks[source] = max(clocks.get(source, -math.inf), ts)
        self._source_first.setdefault(source, ts)
        self._seq += 1
        self._source_seq[source] = self._seq
        self._run = self._run + 1 if source == self._run_source else 1
        self._run_source = source
        self._longest_run = max(self._longest_run, self._run)
        self._clocks_when_heard[source] = dict(clocks)
        self.clock = max(self.clock, ts)
        self._close_before(self.watermark())
        if type != PURCHASE:
            return
        if ts not in self._open:
            heapq.heappush(self._open_heap, ts)
        self._open_line(user_id, item_id, ts, basket_id)

    def quiet(self, source: int) -> bool:
        """``source`` is absent from the last (sources seen) × max(:data:`QUIET_ROUNDS`, 2 × the longest run of one
        source, counted up to :data:`LONGEST_RUN`) events, and every other source that delivered events since it
        last did moved its clock on by more than ``lateness_s`` since then (a source not seen then: since its
        first event); see the module docstring, "Basket assembly"."""
        heard = self._source_seq[source]
        rounds = max(QUIET_ROUNDS, 2 * min(self._longest_run, LONGEST_RUN))
        if self._seq - heard < len(self._source_clock) * rounds:
            return False
        then = self._clocks_when_heard[source]
        return all(clock - then.get(other, self._source_first[other]) > self.lateness_s
                   for other, clock in self._source_clock.items() if self._source_seq[other] > heard)

    def watermark(self) -> float:
        """The oldest clock over the sources that are not quiet: no basket older than it can still arrive, except
        from a quiet source or one not seen yet (``-inf`` before any event with a source)."""
        for source, clock in sorted(self._source_clock.items(), key=lambda pair: pair[1]):
            if not self.quiet(source):
                return clock
        return -math.inf

    def _close_before(self, watermark: float) -> None:
        """Close every open basket older than ``watermark`` (oldest first) and move the windows there."""
        heap = self._open_heap
        due: list[tuple[float, str]] = []
        seen: set[float] = set()
        while heap and heap[0] < watermark:
            ts = heapq.heappop(heap)
            if ts in self._open and ts not in seen:
                seen.add(ts)
                due.extend((ts, user) for user in self._open[ts])
        if due:
            self._close(due)
        if watermark > -math.inf:
            self._advance_windows(watermark)

    def learn(self, baskets: Iterable[Basket]) -> None:
        """Learn complete baskets directly (the offline evaluation's path)."""
        baskets = list(baskets)
        for basket in baskets:
            self.clock = max(self.clock, basket.ts)
        self.repeat.learn(baskets)
        self.cooccurrence.learn(baskets)
        self.popularity.learn(baskets)
        self.recent.learn(baskets)
        self.long_history.learn(baskets)

    def advance_to(self, now: float) -> None:
        """Event time is now ``now``: every basket of an earlier timestamp is complete and learned."""
        if now <= self.clock and not any(ts < now for ts in self._open):
            return
        self.clock = max(self.clock, now)
        self._close([(ts, user) for ts in self._open if ts < now for user in self._open[ts]])
        self._advance_windows(now)

    def _close(self, open_baskets: list[tuple[float, str]]) -> None:
        """Learn the open baskets ``(ts, shopper)``, oldest first, the baskets of one timestamp as one group."""
        users_at: dict[float, list[str]] = defaultdict(list)
        for ts, user in open_baskets:
            users_at[ts].append(user)
        for ts in sorted(users_at):
            shoppers = self._open[ts]
            baskets = []
            for user in users_at[ts]:
                baskets.append(Basket(user, ts, tuple(shoppers.pop(user)), self._open_invoice.pop((ts, user), "")))
                own = self._open_ts_of[user]
                own.discard(ts)
                if not own:
                    del self._open_ts_of[user]
            if not shoppers:
                del self._open[ts]
            if self.before_learn is not None:
                self._advance_windows(ts)
                self.before_learn(baskets)
            self.learn(baskets)

    def _advance_windows(self, now: float) -> None:
        """Move the time windows (popularity) to ``now``."""
        self.popularity.advance_to(now)

    def flush(self) -> None:
        """Close every open basket (end of a replay, or before a snapshot)."""
        if self._open:
            self.advance_to(max(self._open) + 1e-6)

    # ------------------------------------------------------------------ reading

    def knows(self, user_id: str) -> bool:
        return self.repeat.knows(user_id)

    def history(self, user_id: str, max_items: int = 50) -> tuple[int, ...]:
        """Distinct items of the shopper's recent baskets, oldest first, most recent occurrence kept."""
        ordered: dict[int, None] = {}
        for basket in self.long_history.recent(user_id):
            for item in basket:
                ordered.pop(item, None)
                ordered[item] = None
        items = tuple(ordered)
        return items[-max_items:]

    def matrix(self, user_id: str, candidates: np.ndarray, now: float | None = None) -> np.ndarray:
        """Feature rows (``BASIC_COLUMNS``) for ``candidates``, as float32 ``[n, 3]``."""
        candidates = np.asarray(candidates, dtype=np.int64)
        out = np.zeros((len(candidates), len(BASIC_COLUMNS)), dtype=np.float32)
        out[:, 0] = np.log1p(self.repeat.scores(user_id, candidates, now=now))
        items, weights = recency_weights(self.recent.recent(user_id), self.basket_decay)
        if len(items):
            out[:, 1] = _scaled(self.cooccurrence.knn_scores(items, weights, candidates))
        out[:, 2] = _scaled(np.log1p(self.popularity.scores(candidates)))
        return out

    def popular(self, k: int, now: float | None = None) -> np.ndarray:
        """The ``k`` items bought in most baskets in the popularity window, most popular first."""
        if now is not None:
            self.popularity.advance_to(now)
        scores = self.popularity.scores(np.arange(len(self.index)))
        k = min(k, len(scores))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]

    def evidence(self, user_id: str, item: int, top: int = 3) -> list[tuple[int, float]]:
        """History items that support recommending ``item``, strongest first, with their weights.

        The item itself (bought before: its repeat weight) and co-purchased history items
        (recency weight × co-purchase similarity) — exactly the terms of the repeat and kNN columns.
        """
        support: dict[int, float] = {}
        repeat = float(self.repeat.scores(user_id, np.array([item]))[0])
        if repeat > 0:
            support[item] = repeat
        items, weights = recency_weights(self.recent.recent(user_id), self.basket_decay)
        if len(items):
            similarity = self.cooccurrence.similarity(items, np.array([item]))[:, 0]
            for history_item, weight, sim in zip(items.tolist(), weights.tolist(), similarity.tolist(), strict=True):
                if sim > 0 and history_item != item:
                    support[history_item] = support.get(history_item, 0.0) + weight * sim
        ranked = sorted(support.items(), key=lambda pair: -pair[1])
        return ranked[:top]


def _scaled(values: np.ndarray) -> np.ndarray:
    top = float(values.max(initial=0.0))
    return values / top if top > 0 else values
