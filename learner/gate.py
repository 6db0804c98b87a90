"""The publish gate: an adapter reaches shoppers only if it ranks a recent held-out window no worse.

Both the candidate and the adapter now serving score the same window of recent examples that
neither has trained on (test-then-train: the worker scores a window before learning from it).
The candidate is published when its metric is at least the serving one minus a small tolerance,
so noise in a small window does not block progress but a real regression does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from learner.model import Example, RankingModel

Metric = Literal["ndcg@10", "auc"]


@dataclass(frozen=True)
class WindowMetrics:
    """Ranking quality of one model on one window of examples."""

    ndcg_at_10: float
    auc: float
    n: int

    def get(self, metric: Metric) -> float:
        return self.ndcg_at_10 if metric == "ndcg@10" else self.auc


def rank_metrics(scores: torch.Tensor, mask: torch.Tensor) -> WindowMetrics:
    """NDCG@10 and sampled AUC of the positive (column 0) against its negatives.

    Ties count half, so a model that scores everything equal is not rewarded for the positive
    happening to sit in column 0.

    >>> m = rank_metrics(torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 1.0]]), torch.ones(2, 3, dtype=torch.bool))
    >>> round(m.ndcg_at_10, 4), m.auc, m.n
    (0.75, 0.5, 2)
    >>> rank_metrics(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool)).auc
    0.5
    """
    scores = scores.float()
    negatives = mask[:, 1:]
    positive = scores[:, :1]
    above = ((scores[:, 1:] > positive) & negatives).sum(1).float()
    tied = ((scores[:, 1:] == positive) & negatives).sum(1).float()
    rank = above + 0.5 * tied  # 0-based expected rank of the positive
    gain = torch.where(rank < 10, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank))
    n_negatives = negatives.sum(1).float()
    has_negatives = n_negatives > 0
    auc = 1.0 - rank[has_negatives] / n_negatives[has_negatives]
    return WindowMetrics(
        ndcg_at_10=float(gain.mean()) if len(gain) else math.nan,
        auc=float(auc.mean()) if len(auc) else math.nan,
        n=int(scores.shape[0]),
    )


@torch.no_grad()
def evaluate(model: RankingModel, window: Sequence[Example], *, chunk: int = 256) -> WindowMetrics:
    """Score ``window`` with ``model``'s current weights.

    The items the window touches are re-encoded first unless the current text tower already
    encoded them, so the result reflects the current adapter even when the model's item cache is
    older than its weights.
    """
    if not window:
        return WindowMetrics(math.nan, math.nan, 0)
    touched = {i for example in window for i in (*example.history[-model.config.max_history :], *example.candidates)}
    model.ensure_item_vectors(touched)
    scores, masks = [], []
    for start in range(0, len(window), chunk):
        batch = model.batch(window[start : start + chunk])
        scores.append(model(batch).masked_fill(~batch.mask, -math.inf).cpu())
        masks.append(batch.mask.cpu())
    width = max(s.shape[1] for s in scores)
    pad = [torch.nn.functional.pad(s, (0, width - s.shape[1]), value=-math.inf) for s in scores]
    pad_mask = [torch.nn.functional.pad(m, (0, width - m.shape[1]), value=False) for m in masks]
    return rank_metrics(torch.cat(pad), torch.cat(pad_mask))


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
    """

    metric: Metric = "ndcg@10"
    tolerance: float = 0.005
    min_examples: int = 50

    def decide(self, candidate: WindowMetrics, serving: WindowMetrics) -> GateDecision:
        new, old = candidate.get(self.metric), serving.get(self.metric)

        def verdict(publish: bool, reason: str) -> GateDecision:
            return GateDecision(publish, reason, self.metric, candidate, serving)

        if candidate.n < self.min_examples:
            return verdict(False, f"window has {candidate.n} examples, fewer than {self.min_examples}")
        if not math.isfinite(new):
            return verdict(False, f"candidate {self.metric} is not a number")
        if math.isfinite(old) and new < old - self.tolerance:
            return verdict(False, f"{self.metric} {new:.4f} < serving {old:.4f} - tolerance {self.tolerance:.4f}")
        return verdict(True, f"{self.metric} {new:.4f} >= serving {old:.4f} - tolerance {self.tolerance:.4f}")
