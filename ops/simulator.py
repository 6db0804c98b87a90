"""A shopper simulator that closes the loop on real data.

For each shopper visit of the dataset (one basket), before the purchase happens, the simulator
asks a serving worker for recommendations, at the visit's event time (``ts``), so the impression
joins with the basket that follows it. The shopper clicks the recommended items they really
buy within the next ``horizon_days`` (the data says so), and says whether each explanation shown
for a clicked or ignored item was helpful. A shopper who found an explanation unhelpful calls the item
*irrelevant* only if they never buy it at all in the data (before or after): a shopper does not
dismiss their staples just because this basket does without them; otherwise the reason is "unclear".
Every shopper has a preferred explanation style and finds explanations in that style helpful more often —
the ground truth the explanation bandit has to discover.

A share of visits (``search_share``, 30%) start with a search: the shopper types the product type of one of
the basket's items — the last word of its title, lower-cased, the query ``recloop eval --search`` asks
(:meth:`ShopperSimulator.search_query`) — and reacts to the results as to recommendations.

Whose taste is it? With ``preference="shopper"`` each shopper's style is a hash of their id: every
segment then holds every taste in equal shares, so no policy that knows only the segment can beat
a uniform choice (the helpful rate stays at ~0.40 whatever is learned). With ``preference="segment"``
the style follows the shopper's segment (how many baskets they bought before, as the bandit and
serving count it; :data:`SEGMENT_TASTE`). That is the structure a per-segment bandit can learn, and
what ``recloop demo`` and ``recloop bench feedback --live`` use.

:meth:`ShopperSimulator.react_scored` also says, for every verdict, what an **oracle** (the
shopper's preferred style whenever it is among the item's faithful styles) and a **random** policy
(a uniform faithful style) would have got with the same draw, so the live benchmark compares
policies on the same shoppers, items and luck.
"""

from __future__ import annotations

import hashlib
import random
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from learner.explanation_bandit import segment_of
from streams.records import EXPLANATION_STYLES, ExplanationFeedback, Interaction

DAY = 86_400.0
#: A word of a title as a shopper would type it: letters only, two or more.
_WORD = re.compile(r"[a-z]{2,}")


@dataclass(frozen=True, slots=True)
class ShopperVisit:
    """A shopper about to buy ``items`` at ``ts``; ``future_items`` are what they buy in the horizon."""

    user_id: str
    ts: float
    basket_id: str
    items: tuple[str, ...]
    future_items: frozenset[str]
    #: Baskets the shopper bought before this one (in the data given to :func:`visits`).
    baskets_before: int = 0
    #: Everything the shopper buys in the data, at any time (``None``: only ``future_items`` are known).
    ever_items: frozenset[str] | None = None

    def would_dismiss(self, item_id: str) -> bool:
        """Whether the shopper would call ``item_id`` irrelevant: they never buy it.

        >>> visit = ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset({"A"}), ever_items=frozenset({"A", "B"}))
        >>> visit.would_dismiss("B"), visit.would_dismiss("C")
        (False, True)
        """
        return item_id not in (self.ever_items if self.ever_items is not None else self.future_items)

    def recommend_params(self, k: int = 10) -> dict[str, str | int | float]:
        """The query of the ``GET /recommend`` the shopper sends just before buying: it carries the visit's
        event time, so the impression joins with this basket in event time however fast the replay runs.

        >>> ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset({"A"})).recommend_params(k=5)
        {'user_id': 'u1', 'k': 5, 'ts': 1300000000.0}
        """
        return {"user_id": self.user_id, "k": k, "ts": self.ts}

    def search_params(self, query: str, k: int = 10) -> dict[str, str | int | float]:
        """The ``GET /search`` of a visit that starts with ``query``, at the visit's event time.

        >>> ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset({"A"})).search_params("bag", k=5)
        {'q': 'bag', 'user_id': 'u1', 'k': 5, 'ts': 1300000000.0}
        """
        return {"q": query, **self.recommend_params(k)}


def visits(purchases: Iterable[Interaction], horizon_days: float = 7.0) -> list[ShopperVisit]:
    """Group purchases into visits (user, timestamp) and attach what each shopper buys next.

    >>> p = [Interaction("e1", "u", "A", "purchase", 0.0 + 1e9), Interaction("e2", "u", "B", "purchase", DAY + 1e9),
    ...      Interaction("e3", "u", "C", "purchase", 30 * DAY + 1e9)]
    >>> [(v.items, sorted(v.future_items), v.baskets_before) for v in visits(p)]
    [(('A',), ['A', 'B'], 0), (('B',), ['B'], 1), (('C',), ['C'], 2)]
    """
    baskets: dict[tuple[str, float], dict[str, None]] = {}
    basket_ids: dict[tuple[str, float], str] = {}
    for event in purchases:
        if event.type != "purchase":
            continue
        key = (event.user_id, event.ts)
        baskets.setdefault(key, {})[event.item_id] = None
        basket_ids.setdefault(key, event.session_id or f"{event.user_id}@{event.ts:.0f}")
    by_user: dict[str, list[tuple[float, tuple[str, ...]]]] = defaultdict(list)
    for (user, ts), items in baskets.items():
        by_user[user].append((ts, tuple(items)))
    out = []
    for user, timeline in by_user.items():
        timeline.sort()
        times = [ts for ts, _ in timeline]
        ever = frozenset(item for _, items in timeline for item in items)
        for before, (ts, items) in enumerate(timeline):
            end = bisect_left(times, ts + horizon_days * DAY)
            start = bisect_left(times, ts)
            future = frozenset(item for _, later in timeline[start:end] for item in later)
            out.append(ShopperVisit(user, ts, basket_ids[(user, ts)], items, future, before, ever))
    out.sort(key=lambda v: (v.ts, v.user_id))
    return out


PREFERENCES = ("shopper", "segment")

#: The style each segment's shoppers prefer with ``preference="segment"``. New shoppers can only be shown
#: "popular" (there is no history to explain from). Occasional shoppers like to be reminded of what they
#: bought ("history": what the largest scoring term names for most of their recommendations anyway);
#: regulars, who know their own purchases, like hearing about similar products ("similar_text"), which the
#: largest term rarely names. So a policy that only follows the scores gets one segment right and misses
#: the other: the loop has to learn the difference from the shoppers' verdicts. Only styles a served model
#: can make faithful are used: with the untrained head (version 0) the score is repeat + text, so
#: "co_purchase" and "popular" would rarely be honest reasons before the learner publishes a version.
SEGMENT_TASTE = {"new": "popular", "occasional": "history", "regular": "similar_text"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One explanation rated: by the policy that served it, and what the oracle and random policies would get."""

    style: str
    preferred: str
    faithful: tuple[str, ...]
    helpful: bool
    oracle_helpful: bool
    random_helpful: bool


class ShopperSimulator:
    """Decides, deterministically for a seed, how a simulated shopper reacts to a recommendation."""

    def __init__(self, *, seed: int = 0, helpful_if_preferred: float = 0.85, helpful_otherwise: float = 0.25,
                 feedback_rate: float = 0.5, styles: Sequence[str] = EXPLANATION_STYLES,
                 preference: str = "shopper", search_share: float = 0.3) -> None:
        if preference not in PREFERENCES:
            raise ValueError(f"preference must be one of {', '.join(PREFERENCES)}")
        self.seed = seed
        self.helpful_if_preferred = helpful_if_preferred
        self.helpful_otherwise = helpful_otherwise
        self.feedback_rate = feedback_rate
        self.styles = tuple(styles)
        self.preference = preference
        self.search_share = search_share

    def preferred_style(self, user_id: str, baskets_before: int = 0) -> str:
        """The shopper's favourite explanation style: a stable hash of their id, or their segment's.

        >>> ShopperSimulator().preferred_style("17850") in EXPLANATION_STYLES
        True
        >>> ShopperSimulator(preference="segment").preferred_style("17850", baskets_before=7)
        'similar_text'
        """
        if self.preference == "segment":
            return SEGMENT_TASTE[segment_of(baskets_before)]
        digest = hashlib.sha256(f"{self.seed}:{user_id}".encode()).digest()
        return self.styles[digest[0] % len(self.styles)]

    def search_query(self, visit: ShopperVisit, titles: dict[str, str]) -> str | None:
        """The query a visit starts with, in ``search_share`` of visits (None: it does not search): the product
        type of one of the basket's items, the last word of its title (``titles``: item id -> title).

        >>> sim = ShopperSimulator(search_share=1.0)
        >>> sim.search_query(ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset({"A"})), {"A": "JUMBO BAG RED"})
        'red'
        >>> ShopperSimulator(search_share=0.0).search_query(ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset()),
        ...                                                 {"A": "JUMBO BAG"}) is None
        True
        """
        rng = random.Random(f"{self.seed}:search:{visit.user_id}:{visit.ts}")
        if rng.random() >= self.search_share:
            return None
        kinds = [words[-1] for words in (_WORD.findall(titles.get(item, "").lower()) for item in visit.items) if words]
        return rng.choice(kinds) if kinds else None

    def chance(self, style: str, preferred: str) -> float:
        return self.helpful_if_preferred if style == preferred else self.helpful_otherwise

    def react(self, visit: ShopperVisit, recommendation: dict) -> list[Interaction | ExplanationFeedback]:
        """Clicks on recommended items the shopper really buys soon, and feedback on explanations."""
        return self.react_scored(visit, recommendation)[0]

    def react_scored(self, visit: ShopperVisit, recommendation: dict,
                     ) -> tuple[list[Interaction | ExplanationFeedback], list[Verdict]]:
        """:meth:`react`, and a :class:`Verdict` per explanation rated (same order as the feedback events).

        The oracle shows the preferred style when it is one of the item's ``faithful_styles`` (what
        serving says it could honestly have shown; the shown style alone when a response does not
        say), random a uniform faithful style; both are judged with the shopper's own draw.
        """
        rng = random.Random(f"{self.seed}:{visit.user_id}:{visit.ts}")
        rec_id = recommendation["rec_id"]
        preferred = self.preferred_style(visit.user_id, visit.baskets_before)
        out: list[Interaction | ExplanationFeedback] = []
        verdicts: list[Verdict] = []
        for position, item in enumerate(recommendation.get("items", [])):
            item_id = item["item_id"]
            explanation = item.get("explanation") or {}
            clicked = item_id in visit.future_items
            if clicked:
                out.append(Interaction(event_id=f"sim-click-{rec_id}-{position}", user_id=visit.user_id,
                                       item_id=item_id, type="click", ts=visit.ts, session_id=visit.basket_id,
                                       rec_id=rec_id))
            if not explanation.get("explanation_id") or rng.random() >= self.feedback_rate:
                continue
            style = explanation.get("style", "popular")
            draw = rng.random()
            helpful = draw < self.chance(style, preferred)
            faithful = tuple(item.get("faithful_styles") or (style,))
            oracle = preferred if preferred in faithful else style
            coin = random.Random(f"{self.seed}:random:{visit.user_id}:{visit.ts}:{rec_id}:{position}")
            uniform = coin.choice(faithful)
            verdicts.append(Verdict(style, preferred, faithful, helpful, draw < self.chance(oracle, preferred),
                                    draw < self.chance(uniform, preferred)))
            out.append(ExplanationFeedback(
                event_id=f"sim-feedback-{rec_id}-{position}", user_id=visit.user_id, rec_id=rec_id,
                item_id=item_id, explanation_id=explanation["explanation_id"],
                style=style if style in EXPLANATION_STYLES else "popular", helpful=helpful, ts=visit.ts,
                reason=None if helpful else ("irrelevant" if visit.would_dismiss(item_id) else "unclear")))
        return out, verdicts
