"""Which explanation style helps which shoppers: Thompson sampling over styles, per shopper segment.

Shoppers answer "was this explanation helpful?". Each (segment, style) pair keeps a Beta posterior
over its helpful rate; to explain a recommendation, :meth:`ExplanationBandit.predict_one` draws
one rate per style from those posteriors and picks the largest. Styles that clearly help get
shown almost always, styles nobody has tried yet still get tried, and exploration fades by itself
as evidence accumulates — no epsilon to tune. ``discount`` below 1 forgets old evidence
geometrically, so a segment whose taste changes is followed (at the price of a little more
exploration forever).

Segments are coarse on purpose (how much a shopper has bought before): a brand-new shopper has
no history to explain *from*, so "history" cannot help them, while a regular may value it most.
Serving and the worker call the same :func:`segment_of` so both sides mean the same segment.

"Not helpful" says the *explanation* failed; with reason ``irrelevant`` it says the *item* did not
fit the shopper, which is a label for the ranker too: :meth:`learner.rich_features.RichFeatures.learn_feedback`
counts it (weight :data:`IRRELEVANT_WEIGHT`) in that shopper's ``dismissed`` column, which the head weighs
against the item and the listwise loss turns into a weighted negative. Other reasons ("unclear", "wrong
reason", none) only teach the bandit: the shopper may well have wanted the item.

>>> bandit = ExplanationBandit(seed=1)
>>> for _ in range(200):
...     style = bandit.predict_one("regular")
...     bandit.learn_one("regular", style, helpful=(style == "history"))
>>> bandit.best("regular"), bandit.predict_one("regular")
('history', 'history')
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streams.records import EXPLANATION_STYLES, ExplanationFeedback

#: Baskets bought before → segment. Boundaries: none; one to four (getting to know the shop); five or more.
SEGMENTS = ("new", "occasional", "regular")

#: Feedback reasons that mean "this item is wrong for me", not "this explanation is bad".
IRRELEVANT_REASONS = frozenset({"irrelevant", "not relevant", "not_relevant", "not-relevant"})

#: Weight of an "irrelevant" negative next to the example weights of positives (purchase 1.0,
#: add-to-cart 0.5, click 0.25): an explicit, deliberate "no" from the shopper, but one click on a
#: feedback button, so it counts as much as an add-to-cart does in the other direction.
IRRELEVANT_WEIGHT = 0.5


def segment_of(baskets_before: int) -> str:
    """The shopper segment for a shopper with this many earlier baskets.

    >>> segment_of(0), segment_of(3), segment_of(12)
    ('new', 'occasional', 'regular')
    """
    if baskets_before <= 0:
        return "new"
    return "occasional" if baskets_before < 5 else "regular"


@dataclass
class _Beta:
    helpful: float = 1.0  #: alpha: prior 1 + helpful votes
    unhelpful: float = 1.0  #: beta: prior 1 + not-helpful votes

    @property
    def mean(self) -> float:
        return self.helpful / (self.helpful + self.unhelpful)


class ExplanationBandit:
    """Thompson sampling over explanation styles, one independent bandit per segment.

    Parameters
    ----------
    styles
        The arms: the explanation styles serving can produce.
    discount
        Multiplies every posterior count of a segment before each update (1: never forget).
    prior
        Pseudo-counts of the Beta(prior, prior) prior of every arm.
    seed
        Seeds the posterior draws, so a replay makes the same choices.
    """

    def __init__(self, styles: Sequence[str] = EXPLANATION_STYLES, *, discount: float = 1.0, prior: float = 1.0,
                 seed: int | None = None) -> None:
        if not 0 < discount <= 1:
            raise ValueError("discount must be in (0, 1]")
        self.styles = tuple(styles)
        self.discount = discount
        self.prior = prior
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self._rng = random.Random(self.seed)
        self._arms: dict[str, dict[str, _Beta]] = {}

    def _segment(self, segment: str) -> dict[str, _Beta]:
        arms = self._arms.get(segment)
        if arms is None:
            arms = self._arms[segment] = {style: _Beta(self.prior, self.prior) for style in self.styles}
        return arms

    def predict_one(self, segment: str, available: Iterable[str] | None = None) -> str:
        """The style to show now: the best of one posterior draw per (available) style."""
        arms = self._segment(segment)
        candidates = [s for s in (available if available is not None else self.styles) if s in arms]
        if not candidates:
            raise ValueError(f"none of the available styles is known: {available!r}")
        return max(candidates, key=lambda s: self._rng.betavariate(arms[s].helpful, arms[s].unhelpful))

    def learn_one(self, segment: str, style: str, helpful: bool) -> None:
        """Count one helpful / not helpful verdict on ``style`` shown to a shopper of ``segment``."""
        arms = self._segment(segment)
        if style not in arms:
            return  # a style this bandit does not choose between (an older serving version): ignore
        if self.discount < 1:
            for arm in arms.values():
                arm.helpful = self.prior + self.discount * (arm.helpful - self.prior)
                arm.unhelpful = self.prior + self.discount * (arm.unhelpful - self.prior)
        if helpful:
            arms[style].helpful += 1
        else:
            arms[style].unhelpful += 1

    def rates(self, segment: str) -> dict[str, float]:
        """Posterior mean helpful rate of each style for ``segment``."""
        return {style: arm.mean for style, arm in self._segment(segment).items()}

    def votes(self, segment: str) -> dict[str, float]:
        """Evidence behind each style's rate (votes counted, after discounting)."""
        return {style: arm.helpful + arm.unhelpful - 2 * self.prior for style, arm in self._segment(segment).items()}

    def best(self, segment: str) -> str:
        """The style with the highest posterior mean (what a greedy choice would show)."""
        rates = self.rates(segment)
        return max(rates, key=rates.__getitem__)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self._arms)

    def posteriors(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Every segment's Beta parameters ``(alpha, beta)`` per style: what an explanation policy publishes.

        >>> bandit = ExplanationBandit(("history", "popular"))
        >>> bandit.learn_one("new", "popular", helpful=True)
        >>> bandit.posteriors()
        {'new': {'history': (1.0, 1.0), 'popular': (2.0, 1.0)}}
        """
        return {segment: {style: (arm.helpful, arm.unhelpful) for style, arm in arms.items()}
                for segment, arms in self._arms.items()}


def is_irrelevant(feedback: ExplanationFeedback) -> bool:
    """Whether the shopper said the *item* does not fit them (not helpful, reason "irrelevant")."""
    reason = (feedback.reason or "").strip().lower()
    return not feedback.helpful and reason in IRRELEVANT_REASONS
