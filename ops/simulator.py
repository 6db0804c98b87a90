"""A shopper simulator that closes the loop on real data.

For each shopper visit of the dataset (one basket), before the purchase happens, the simulator
asks a serving worker for recommendations, at the visit's event time (``ts``), so the impression
joins with the basket that follows it. The shopper clicks the recommended items they really
buy within the next ``horizon_days`` (the data says so), and says whether each explanation shown
for a clicked or ignored item was helpful. Every shopper has a preferred explanation style (a
deterministic function of their id) and finds explanations in that style helpful more often —
the ground truth the explanation bandit has to discover.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streams.records import EXPLANATION_STYLES, ExplanationFeedback, Interaction

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class ShopperVisit:
    """A shopper about to buy ``items`` at ``ts``; ``future_items`` are what they buy in the horizon."""

    user_id: str
    ts: float
    basket_id: str
    items: tuple[str, ...]
    future_items: frozenset[str]

    def recommend_params(self, k: int = 10) -> dict[str, str | int | float]:
        """The query of the ``GET /recommend`` the shopper sends just before buying: it carries the visit's
        event time, so the impression joins with this basket in event time however fast the replay runs.

        >>> ShopperVisit("u1", 1.3e9, "b1", ("A",), frozenset({"A"})).recommend_params(k=5)
        {'user_id': 'u1', 'k': 5, 'ts': 1300000000.0}
        """
        return {"user_id": self.user_id, "k": k, "ts": self.ts}


def visits(purchases: Iterable[Interaction], horizon_days: float = 7.0) -> list[ShopperVisit]:
    """Group purchases into visits (user, timestamp) and attach what each shopper buys next.

    >>> p = [Interaction("e1", "u", "A", "purchase", 0.0 + 1e9), Interaction("e2", "u", "B", "purchase", DAY + 1e9),
    ...      Interaction("e3", "u", "C", "purchase", 30 * DAY + 1e9)]
    >>> [(v.items, sorted(v.future_items)) for v in visits(p)]
    [(('A',), ['A', 'B']), (('B',), ['B']), (('C',), ['C'])]
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
        for ts, items in timeline:
            end = bisect_left(times, ts + horizon_days * DAY)
            start = bisect_left(times, ts)
            future = frozenset(item for _, later in timeline[start:end] for item in later)
            out.append(ShopperVisit(user, ts, basket_ids[(user, ts)], items, future))
    out.sort(key=lambda v: (v.ts, v.user_id))
    return out


class ShopperSimulator:
    """Decides, deterministically for a seed, how a simulated shopper reacts to a recommendation."""

    def __init__(self, *, seed: int = 0, helpful_if_preferred: float = 0.85, helpful_otherwise: float = 0.25,
                 feedback_rate: float = 0.5, styles: Sequence[str] = EXPLANATION_STYLES) -> None:
        self.seed = seed
        self.helpful_if_preferred = helpful_if_preferred
        self.helpful_otherwise = helpful_otherwise
        self.feedback_rate = feedback_rate
        self.styles = tuple(styles)

    def preferred_style(self, user_id: str) -> str:
        """Each shopper's favourite explanation style: a stable hash of their id.

        >>> ShopperSimulator().preferred_style("17850") in EXPLANATION_STYLES
        True
        """
        digest = hashlib.sha256(f"{self.seed}:{user_id}".encode()).digest()
        return self.styles[digest[0] % len(self.styles)]

    def react(self, visit: ShopperVisit, recommendation: dict) -> list[Interaction | ExplanationFeedback]:
        """Clicks on recommended items the shopper really buys soon, and feedback on explanations."""
        rng = random.Random(f"{self.seed}:{visit.user_id}:{visit.ts}")
        rec_id = recommendation["rec_id"]
        preferred = self.preferred_style(visit.user_id)
        out: list[Interaction | ExplanationFeedback] = []
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
            chance = self.helpful_if_preferred if style == preferred else self.helpful_otherwise
            helpful = rng.random() < chance
            out.append(ExplanationFeedback(
                event_id=f"sim-feedback-{rec_id}-{position}", user_id=visit.user_id, rec_id=rec_id,
                item_id=item_id, explanation_id=explanation["explanation_id"],
                style=style if style in EXPLANATION_STYLES else "popular", helpful=helpful, ts=visit.ts,
                reason=None if helpful else ("irrelevant" if not clicked else "unclear")))
        return out
