"""The publish gate: an adapter reaches shoppers only if it ranks a recent held-out window no worse.

Both the candidate and the adapter now serving rank the same window of recent baskets, over the
whole catalogue as serving would, and neither has trained on it (test-then-train: see
:mod:`learner.ranker`, which computes the metrics this module decides on).
The candidate is published when its metric is at least the serving one minus a small tolerance,
so noise in a small window does not block progress but a real regression does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Metric = Literal["ndcg@10", "auc"]


@dataclass(frozen=True)
class WindowMetrics:
    """Ranking quality of one model on one window of examples."""

    ndcg_at_10: float
    auc: float
    n: int

    def get(self, metric: Metric) -> float:
        return self.ndcg_at_10 if metric == "ndcg@10" else self.auc


@dataclass(frozen=True)
class GateDecision:
    """Whether to publish, and why, with both models' metrics for the manifest and the logs."""

    publish: bool
    reason: str
    metric: Metric
    candidate: WindowMetrics
    serving: WindowMetrics

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for an adapter manifest."""
        return {
            "window_examples": float(self.candidate.n),
            "ndcg_at_10": self.candidate.ndcg_at_10,
            "auc": self.candidate.auc,
            "serving_ndcg_at_10": self.serving.ndcg_at_10,
            "serving_auc": self.serving.auc,
        }


@dataclass(frozen=True)
class PublishGate:
    """Publish a candidate when ``candidate >= serving - tolerance`` on a large enough window.

    >>> gate = PublishGate(min_examples=1)
    >>> gate.decide(WindowMetrics(0.30, 0.8, 100), WindowMetrics(0.28, 0.8, 100)).publish
    True
    >>> gate.decide(WindowMetrics(0.20, 0.8, 100), WindowMetrics(0.28, 0.8, 100)).reason
    'ndcg@10 0.2000 < serving 0.2800 - tolerance 0.0050'

    ``hold`` (why publishing is held, :mod:`learner.drift_hold`) refuses whatever the metrics say:

    >>> gate.decide(WindowMetrics(0.30, 0.8, 100), WindowMetrics(0.28, 0.8, 100), hold="drift").reason
    'held: drift'
    """

    metric: Metric = "ndcg@10"
    tolerance: float = 0.005
    min_examples: int = 50

    def decide(self, candidate: WindowMetrics, serving: WindowMetrics, *, hold: str | None = None) -> GateDecision:
        new, old = candidate.get(self.metric), serving.get(self.metric)

        def verdict(publish: bool, reason: str) -> GateDecision:
            return GateDecision(publish, reason, self.metric, candidate, serving)

        if hold:
            return verdict(False, f"held: {hold}")
        if candidate.n < self.min_examples:
            return verdict(False, f"window has {candidate.n} examples, fewer than {self.min_examples}")
        if not math.isfinite(new):
            return verdict(False, f"candidate {self.metric} is not a number")
        if math.isfinite(old) and new < old - self.tolerance:
            return verdict(False, f"{self.metric} {new:.4f} < serving {old:.4f} - tolerance {self.tolerance:.4f}")
        return verdict(True, f"{self.metric} {new:.4f} >= serving {old:.4f} - tolerance {self.tolerance:.4f}")
