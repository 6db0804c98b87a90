"""Training examples from the live stream: who chose what, over which alternatives, knowing what.

An :class:`~learner.model.Example` is one choice: a shopper with a history picked a *positive*
item over some *negatives*, with the behavioural feature rows of every candidate. This module
turns events into examples, in the prequential order the gate relies on (**test, then train**):
an event's example is built from the state *before* the event is learned.

Positives are purchases, add-to-cart and clicks, weighted by how much they say
(:data:`POSITIVE_WEIGHTS`). Views say too little and returns say the opposite; neither is a
positive (both still reach :class:`~learner.features.BehaviourFeatures`, which ignores them).

Negatives come from one of two places:

* **Impressions** (what serving showed, joined on ``rec_id``): an item shown but not chosen
  within :attr:`ExampleConfig.label_window_s` of event time (default 30 minutes) is a negative
  for every item of that impression that was chosen. An impression is closed (and its examples
  emitted) when event time passes ``shown_at + window``. Its feature rows and the shopper's
  history are snapshotted *when it was shown*, so the example sees what the ranker saw. A
  response that arrives before its impression (they travel on different topics) waits, up to
  the same window, for the impression; if none comes it falls back to sampled negatives. An
  impression nobody responded to yields no example: a softmax needs a chosen item.
* **The catalogue**, when there is no impression (replayed history, organic purchases):
  :class:`NegativeSampler` draws half from the currently popular items (hard negatives: what a
  popularity ranker would wrongly put first) and half uniformly from the catalogue, never the
  positive and never another item of the same basket.

State is bounded: shopper history is read from the features (at most ``max_history`` distinct
items of their recent baskets), open impressions are capped (the oldest closes early), and
sampling is deterministic for a seed and an event order.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from learner.features import BehaviourFeatures
from learner.model import Example
from streams.records import Impression, Interaction

log = logging.getLogger(__name__)

#: How strongly each interaction type says "I wanted this". Absent types are never positives.
POSITIVE_WEIGHTS: Mapping[str, float] = MappingProxyType({"purchase": 1.0, "add_to_cart": 0.5, "click": 0.25})


@dataclass(frozen=True)
class ExampleConfig:
    """How examples are built; the defaults suit the Online Retail replay and a live shop alike."""

    #: Negatives per sampled example (impression examples use what was shown, however many).
    negatives: int = 15
    #: Hard negatives are drawn from this many most popular items …
    popular_pool: int = 200
    #: … and make up this share of the sampled negatives; the rest are uniform over the catalogue.
    popular_fraction: float = 0.5
    #: A shown item not chosen within this many seconds of event time is a negative.
    label_window_s: float = 1800.0
    #: Impressions waiting for their window to close; beyond this the oldest closes early.
    max_open_impressions: int = 10_000
    #: Items of shopper history an example carries (oldest → newest).
    max_history: int = 50
    weights: Mapping[str, float] = field(default_factory=lambda: POSITIVE_WEIGHTS)
    seed: int = 0


def positive_weight(kind: str, weights: Mapping[str, float] = POSITIVE_WEIGHTS) -> float:
    """The example weight of an interaction type; 0 when it is not a positive.

    >>> positive_weight("purchase"), positive_weight("click"), positive_weight("return")
    (1.0, 0.25, 0.0)
    """
    return float(weights.get(kind, 0.0))


class NegativeSampler:
    """Popularity-aware negatives from the catalogue, never an excluded item, deterministic for a seed.

    >>> sampler = NegativeSampler(negatives=4, popular_fraction=0.5, seed=0)
    >>> negatives = sampler.sample(n_items=10, popular=np.array([3, 1, 7]), exclude={3})
    >>> len(negatives), 3 in negatives, len(set(negatives))
    (4, False, 4)
    >>> NegativeSampler(negatives=4, seed=0).sample(n_items=10, popular=np.array([3, 1, 7]), exclude={3}) == negatives
    True
    >>> NegativeSampler(negatives=5).sample(n_items=3, popular=np.array([]), exclude={0})
    (1, 2)
    """

    def __init__(self, negatives: int = 15, popular_fraction: float = 0.5, seed: int = 0) -> None:
        self.negatives = negatives
        self.popular_fraction = popular_fraction
        self._rng = np.random.default_rng(seed)

    def sample(self, n_items: int, popular: np.ndarray, exclude: set[int]) -> tuple[int, ...]:
        """Up to ``negatives`` distinct items in ``range(n_items)`` outside ``exclude``."""
        excluded = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
        available = n_items - int(np.count_nonzero((excluded >= 0) & (excluded < n_items)))
        wanted = min(self.negatives, max(0, available))
        chosen: dict[int, None] = {}
        popular = np.asarray(popular, dtype=np.int64)
        pool = popular[(popular >= 0) & (popular < n_items) & ~np.isin(popular, excluded)]
        n_popular = min(len(pool), round(wanted * self.popular_fraction))
        if n_popular:
            chosen.update(dict.fromkeys(pool[self._rng.choice(len(pool), size=n_popular, replace=False)].tolist()))
        if available <= 4 * wanted:  # a tiny catalogue: choose among what is left directly
            rest = [i for i in range(n_items) if i not in exclude and i not in chosen]
            take = min(wanted - len(chosen), len(rest))
            for position in sorted(self._rng.choice(len(rest), size=take, replace=False)) if take else ():
                chosen[rest[int(position)]] = None
        else:  # a large catalogue: rejection sampling ends fast (at most a quarter is excluded or chosen)
            while len(chosen) < wanted:
                for item in self._rng.integers(n_items, size=2 * (wanted - len(chosen))).tolist():
                    if item not in exclude and len(chosen) < wanted:
                        chosen.setdefault(item, None)
        return tuple(chosen)


@dataclass
class ShownImpression:
    """An impression waiting for responses, with the state the ranker saw when it was shown."""

    rec_id: str
    user_id: str
    ts: float
    items: tuple[int, ...]
    history: tuple[int, ...]
    features: np.ndarray  # [len(items), n_features], computed at show time
    responses: dict[int, float] = field(default_factory=dict)  # item -> strongest weight

    def examples(self) -> list[Example]:
        """One example per chosen item: the chosen one over everything shown and not chosen."""
        row_of = {item: row for row, item in enumerate(self.items)}
        negatives = tuple(item for item in self.items if item not in self.responses)
        if not negatives:
            return []
        negative_rows = [row_of[item] for item in negatives]
        return [Example(history=self.history, positive=item, negatives=negatives,
                        features=self.features[[row_of[item], *negative_rows]], weight=weight)
                for item, weight in self.responses.items()]


@dataclass
class _Orphan:
    """A response whose impression has not arrived yet, with its sampled-negatives fallback."""

    ts: float
    item: int
    weight: float
    fallback: Example | None


class ImpressionJoin:
    """Join responses to impressions by ``rec_id`` within an event-time window.

    >>> join = ImpressionJoin(window_s=60)
    >>> join.show(ShownImpression("r1", "u1", 0.0, (5, 6, 7), (1,), np.zeros((3, 3), np.float32)))
    []
    >>> join.respond("r1", 6, 1.0, ts=10.0, fallback=None)
    True
    >>> join.expire(now=30.0), len(join)
    ([], 1)
    >>> [(e.positive, e.negatives) for e in join.expire(now=61.0)]
    [(6, (5, 7))]
    """

    def __init__(self, window_s: float = 1800.0, max_open: int = 10_000) -> None:
        self.window_s = window_s
        self.max_open = max_open
        self._open: OrderedDict[str, ShownImpression] = OrderedDict()
        self._orphans: OrderedDict[str, list[_Orphan]] = OrderedDict()
        #: rec_ids recently closed: a late duplicate of an impression must not reopen it
        self._closed: OrderedDict[str, None] = OrderedDict()
        #: sampled-negative examples of responses that found no impression, ready to hand out
        self._fallbacks: list[Example | None] = []
        self.ignored_impressions = 0  # closed without any response

    def __len__(self) -> int:
        return len(self._open)

    def is_open(self, rec_id: str) -> bool:
        """Whether the impression ``rec_id`` was shown and its window has not closed."""
        return rec_id in self._open

    def show(self, shown: ShownImpression) -> list[Example]:
        """Open an impression (a repeated ``rec_id`` is ignored); returns examples of any impression
        closed early to respect ``max_open``."""
        if shown.rec_id in self._open or shown.rec_id in self._closed:
            return []
        self._open[shown.rec_id] = shown
        for orphan in self._orphans.pop(shown.rec_id, []):
            if not self._record(shown, orphan.item, orphan.weight):
                self._fallbacks.append(orphan.fallback)
        closed: list[Example] = []
        while len(self._open) > self.max_open:
            closed.extend(self._close(next(iter(self._open))))
        return [*closed, *self._take_fallbacks()]

    def respond(self, rec_id: str, item: int, weight: float, *, ts: float, fallback: Example | None) -> bool:
        """Attribute a response to its impression. True when the join took it over (the caller must not
        also use ``fallback``): it matched an open impression, or it waits for one as an orphan."""
        shown = self._open.get(rec_id)
        if shown is not None:
            return self._record(shown, item, weight)
        if rec_id in self._closed:
            return False  # too late: the impression's window has closed
        self._orphans.setdefault(rec_id, []).append(_Orphan(ts, item, weight, fallback))
        while len(self._orphans) > self.max_open:
            _, dropped = self._orphans.popitem(last=False)
            self._fallbacks.extend(o.fallback for o in dropped)
        return True

    def expire(self, now: float) -> list[Example]:
        """Close every impression whose window ended before ``now``; give up on orphans as old."""
        out: list[Example] = []
        cutoff = now - self.window_s
        for rec_id in [r for r, shown in self._open.items() if shown.ts <= cutoff]:
            out.extend(self._close(rec_id))
        for rec_id in [r for r, orphans in self._orphans.items() if orphans[0].ts <= cutoff]:
            self._fallbacks.extend(o.fallback for o in self._orphans.pop(rec_id))
        return [*out, *self._take_fallbacks()]

    def drain(self) -> list[Example]:
        """Close everything now (end of a replay, or a test)."""
        out = [e for rec_id in list(self._open) for e in self._close(rec_id)]
        for orphans in self._orphans.values():
            self._fallbacks.extend(o.fallback for o in orphans)
        self._orphans.clear()
        return [*out, *self._take_fallbacks()]

    # ------------------------------------------------------------------ internals

    def _take_fallbacks(self) -> list[Example]:
        taken = [e for e in self._fallbacks if e is not None]
        self._fallbacks.clear()
        return taken

    @staticmethod
    def _record(shown: ShownImpression, item: int, weight: float) -> bool:
        if item not in shown.items:
            return False  # chose something that was not shown: not this impression's label
        shown.responses[item] = max(weight, shown.responses.get(item, 0.0))
        return True

    def _close(self, rec_id: str) -> list[Example]:
        shown = self._open.pop(rec_id)
        self._closed[rec_id] = None
        while len(self._closed) > 4 * self.max_open:
            self._closed.popitem(last=False)
        if not shown.responses:
            self.ignored_impressions += 1
        return shown.examples()


class ExampleBuilder:
    """Events in, examples out, in test-then-train order; owns the label join and the sampler.

    >>> from learner.features import BehaviourFeatures
    >>> def buy(event_id, user, item, ts):
    ...     return Interaction(event_id, user, item, "purchase", ts)
    >>> builder = ExampleBuilder(BehaviourFeatures(), ExampleConfig(negatives=2, seed=1))
    >>> len(builder.observe([buy("e1", "u1", "A", 1e9), buy("e2", "u2", "B", 1e9), buy("e3", "u3", "C", 1e9)]))
    2
    >>> [example] = builder.observe([buy("e4", "u1", "A", 1e9 + 60)])
    >>> example.positive, sorted(example.negatives), example.history, bool(example.features[0, 0] > 0)
    (0, [1, 2], (0,), True)
    """

    def __init__(self, features: BehaviourFeatures, config: ExampleConfig | None = None) -> None:
        self.features = features
        self.config = config or ExampleConfig()
        self.sampler = NegativeSampler(self.config.negatives, self.config.popular_fraction, self.config.seed)
        self.join = ImpressionJoin(self.config.label_window_s, self.config.max_open_impressions)
        self.clock = -math.inf

    def observe_impressions(self, impressions: Iterable[Impression]) -> list[Example]:
        """Snapshot what each impression showed and what the ranker knew; labels come later."""
        out: list[Example] = []
        for impression in impressions:
            if impression.route != "recommend":  # a search's list depends on its query, which the head does not read
                continue
            items = tuple(dict.fromkeys(self.features.add_item(shown.item_id) for shown in impression.items))
            if not items:
                continue
            self.features.advance_to(impression.ts)
            self.clock = max(self.clock, impression.ts)
            out.extend(self.join.show(ShownImpression(
                rec_id=impression.rec_id, user_id=impression.user_id, ts=impression.ts, items=items,
                history=self.features.history(impression.user_id, self.config.max_history),
                features=self.features.matrix(impression.user_id, np.asarray(items), now=impression.ts))))
        return out

    def observe(self, interactions: Sequence[Interaction]) -> list[Example]:
        """Examples of ``interactions`` (built first), then learn them; plus any labels whose window closed.

        Events of one shopper at one timestamp are one basket: all its examples are built before any of
        it is learned, and no item of the basket is sampled as a negative for another.
        """
        out: list[Example] = []
        for group in _baskets(interactions):
            user, ts = group[0].user_id, group[0].ts
            items = [self.features.add_item(event.item_id) for event in group]
            basket = {item for event, item in zip(group, items, strict=True)
                      if positive_weight(event.type, self.config.weights) > 0}
            self.features.advance_to(ts)  # baskets of strictly earlier timestamps are complete: use them
            popular: np.ndarray | None = None
            for event, item in zip(group, items, strict=True):
                weight = positive_weight(event.type, self.config.weights)
                if weight <= 0:
                    continue
                if popular is None:
                    popular = self.features.popular(self.config.popular_pool, now=ts)
                example = self._sampled(user, item, weight, ts, popular, basket)
                if event.rec_id is not None and self.join.respond(event.rec_id, item, weight, ts=ts,
                                                                  fallback=example):
                    continue
                if example is not None:
                    out.append(example)
            for event in group:
                self.features.learn_interaction(event.user_id, event.item_id, event.type, event.ts,
                                                basket_id=event.session_id)
            self.clock = max(self.clock, ts)
        out.extend(self.join.expire(self.clock))
        return out

    def drain(self) -> list[Example]:
        """Close every pending impression and orphan response now."""
        return self.join.drain()

    def _sampled(self, user: str, item: int, weight: float, ts: float, popular: np.ndarray,
                 basket: set[int]) -> Example | None:
        negatives = self.sampler.sample(len(self.features.index), popular, exclude=basket | {item})
        if not negatives:
            return None  # a catalogue of one item teaches nothing
        candidates = np.asarray((item, *negatives), dtype=np.int64)
        return Example(history=self.features.history(user, self.config.max_history), positive=item,
                       negatives=negatives, features=self.features.matrix(user, candidates, now=ts), weight=weight)


def _baskets(interactions: Sequence[Interaction]) -> list[list[Interaction]]:
    """Group events by (shopper, timestamp), groups in order of first appearance, events in order.

    >>> events = [Interaction(str(i), u, "A", "purchase", t) for i, (u, t) in enumerate(
    ...     [("a", 1e9), ("b", 1e9), ("a", 1e9), ("a", 2e9)])]
    >>> [[e.event_id for e in group] for group in _baskets(events)]
    [['0', '2'], ['1'], ['3']]
    """
    groups: dict[tuple[str, float], list[Interaction]] = {}
    for event in interactions:
        groups.setdefault((event.user_id, event.ts), []).append(event)
    return list(groups.values())
