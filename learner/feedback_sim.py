"""A simulated shop that answers "was this explanation helpful?", to measure how fast the bandit learns.

Every simulated shopper belongs to a segment and has a *preferred* explanation style that we know
(the segment's: new shoppers like "popular", occasional ones "co_purchase", regulars "history").
A shopper finds the preferred style helpful with their own probability (drawn in
``preferred_rate``) and every other style with a lower one (drawn per segment and style in
``other_rate``). The **oracle** always shows the preferred style; a **random** policy shows a
uniform style; the **bandit** (:class:`~learner.explanation_bandit.ExplanationBandit`) learns from
the verdicts it gets.

All three policies see the same shoppers in the same order with the same uniform draw per event
(common random numbers), so their difference is the policy and not the luck of the draw.

The result is a helpfulness curve (rates per block of events) and ``events_to_90``: the number of
feedback events by which the bandit's helpful rate over a block of events is at least 90 % of the
oracle's, and stays so in every later block.

>>> result = simulate(SimConfig(events=3000, seed=0))
>>> result.events_to_90 <= 1000, result.final_ratio >= 0.9
(True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from learner.explanation_bandit import SEGMENTS, ExplanationBandit
from streams.records import EXPLANATION_STYLES

#: The style each segment's shoppers prefer (what the oracle knows and the bandit must find out).
PREFERRED = {"new": "popular", "occasional": "co_purchase", "regular": "history"}


@dataclass(frozen=True)
class SimConfig:
    """The simulated shop; the defaults are the scenario the figures in ``docs/operations.md`` use."""

    shoppers: int = 600
    events: int = 5000
    #: share of shoppers in each segment (order of :data:`~learner.explanation_bandit.SEGMENTS`)
    segment_mix: tuple[float, ...] = (0.3, 0.4, 0.3)
    #: per-shopper probability that the preferred style helps: uniform in this range
    preferred_rate: tuple[float, float] = (0.6, 0.8)
    #: per-(segment, style) probability that a non-preferred style helps: uniform in this range
    other_rate: tuple[float, float] = (0.2, 0.45)
    block: int = 250
    seed: int = 0


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    #: per block: (events so far, bandit rate, oracle rate, random rate)
    curve: tuple[tuple[int, float, float, float], ...]
    events_to_90: int | None
    bandit_rate: float
    oracle_rate: float
    random_rate: float

    @property
    def final_ratio(self) -> float:
        """Bandit over oracle helpful rate in the last block."""
        _, bandit, oracle, _ = self.curve[-1]
        return bandit / oracle

    def as_dict(self) -> dict:
        return {"config": asdict(self.config), "events_to_90": self.events_to_90,
                "bandit_rate": round(self.bandit_rate, 4), "oracle_rate": round(self.oracle_rate, 4),
                "random_rate": round(self.random_rate, 4), "final_ratio": round(self.final_ratio, 4),
                "curve": [{"events": n, "bandit": round(b, 4), "oracle": round(o, 4), "random": round(r, 4)}
                          for n, b, o, r in self.curve]}


def simulate(config: SimConfig = SimConfig(), bandit: ExplanationBandit | None = None) -> SimResult:
    """Run the three policies over the same simulated feedback stream."""
    rng = np.random.default_rng(config.seed)
    styles = list(EXPLANATION_STYLES)
    segments = rng.choice(len(SEGMENTS), size=config.shoppers, p=np.asarray(config.segment_mix))
    own_rate = rng.uniform(*config.preferred_rate, size=config.shoppers)
    other = rng.uniform(*config.other_rate, size=(len(SEGMENTS), len(styles)))
    preferred = np.array([styles.index(PREFERRED[s]) for s in SEGMENTS])

    def helpful_rate(shopper: int, style: int) -> float:
        segment = segments[shopper]
        return own_rate[shopper] if style == preferred[segment] else other[segment, style]

    bandit = bandit if bandit is not None else ExplanationBandit(styles, seed=config.seed)
    shoppers = rng.integers(config.shoppers, size=config.events)
    draws = rng.random(config.events)
    random_styles = rng.integers(len(styles), size=config.events)
    outcomes = np.zeros((config.events, 3), dtype=bool)  # bandit, oracle, random
    for t, (shopper, u) in enumerate(zip(shoppers.tolist(), draws.tolist(), strict=True)):
        segment = SEGMENTS[segments[shopper]]
        style = bandit.predict_one(segment)
        helpful = u < helpful_rate(shopper, styles.index(style))
        bandit.learn_one(segment, style, helpful)
        outcomes[t] = (helpful, u < helpful_rate(shopper, preferred[segments[shopper]]),
                       u < helpful_rate(shopper, random_styles[t]))

    curve = []
    for start in range(0, config.events, config.block):
        block = outcomes[start:start + config.block].mean(axis=0)
        curve.append((min(start + config.block, config.events), *map(float, block)))
    return SimResult(config=config, curve=tuple(curve), events_to_90=events_to_ratio(curve, 0.9),
                     bandit_rate=float(outcomes[:, 0].mean()), oracle_rate=float(outcomes[:, 1].mean()),
                     random_rate=float(outcomes[:, 2].mean()))


def events_to_ratio(curve: list[tuple[int, float, float, float]], ratio: float) -> int | None:
    """Events at the end of the first block from which on every block's bandit rate is >= ``ratio`` × oracle's.

    >>> events_to_ratio([(100, 0.3, 0.7, 0.4), (200, 0.65, 0.7, 0.4), (300, 0.68, 0.7, 0.4)], 0.9)
    200
    >>> events_to_ratio([(100, 0.3, 0.7, 0.4)], 0.9) is None
    True
    """
    reached = None
    for events, bandit, oracle, _ in curve:
        if bandit < ratio * oracle:
            reached = None
        elif reached is None:
            reached = events
    return reached
