"""Ranking metrics of one ranked list, and a batched NDCG: the one implementation every figure uses.

Every function reads **0-based ranks of the targets** (the relevant items) in one ranking, binary
relevance. A target that could not be ranked (an item the model never saw) is simply absent from
``ranks`` while still counted in ``n_targets``, so it is a miss. Ranks may be fractional: an expected
rank under random tie-breaking (:func:`learner.online_metrics.expected_rank`) is 1.5 for an item tied
with one other at ranks 1 and 2.

- NDCG@k: DCG of the hits over the ideal DCG of ``min(k, n_targets)`` hits at the top, so a perfect
  top-k scores 1 even when a basket holds more than ``k`` items;
- HR@k: 1 when any target is in the top ``k``;
- Recall@k: hits in the top ``k`` over ``min(k, n_targets)``;
- reciprocal rank: 1 / (1-based) rank of the best-ranked target, over the whole ranking.

Used by the offline protocol (:mod:`ops.evaluate`) and the live online metrics
(:class:`learner.online_metrics.RankOutcome`); numpy only, no torch.
"""

from __future__ import annotations

import numpy as np

#: The cut-off every reported figure uses.
K = 10


def dcg(ranks: np.ndarray, k: int = K) -> float:
    """Discounted cumulative gain of hits at 0-based ``ranks`` (binary relevance), cut at ``k``.

    >>> round(dcg(np.array([0, 2, 12]), k=10), 4)
    1.5
    >>> round(dcg(np.array([1.5]), k=10), 4)  # an expected rank between 2nd and 3rd place
    0.5533
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    hits = ranks[ranks < k]
    return float(np.sum(1.0 / np.log2(hits + 2.0)))


def ideal_dcg(n_targets: int, k: int = K) -> float:
    """DCG of ``min(k, n_targets)`` hits at the top: the best a ranking of ``n_targets`` targets can do.

    >>> ideal_dcg(1), round(ideal_dcg(2), 4), ideal_dcg(0), ideal_dcg(50) == ideal_dcg(10)
    (1.0, 1.6309, 0.0, True)
    """
    return float(np.sum(1.0 / np.log2(np.arange(min(k, max(n_targets, 0))) + 2.0)))


def ndcg_at_k(ranks: np.ndarray, n_targets: int, k: int = K) -> float:
    """DCG over the ideal DCG of ``min(k, n_targets)`` hits at the top; 0 when there is no target.

    >>> ndcg_at_k(np.array([0, 1]), n_targets=2, k=10), round(ndcg_at_k(np.array([1]), n_targets=1, k=10), 4)
    (1.0, 0.6309)
    >>> round(ndcg_at_k(np.array([0]), n_targets=2, k=10), 4)  # the other target was never seen: a miss
    0.6131
    """
    ideal = ideal_dcg(n_targets, k)
    return dcg(ranks, k) / ideal if ideal > 0 else 0.0


def hit_rate_at_k(ranks: np.ndarray, k: int = K) -> float:
    """1 when any target is in the top ``k``.

    >>> hit_rate_at_k(np.array([12, 3]), k=10), hit_rate_at_k(np.array([10]), k=10)
    (1.0, 0.0)
    """
    return float(np.any(np.asarray(ranks) < k))


def recall_at_k(ranks: np.ndarray, n_targets: int, k: int = K) -> float:
    """Hits in the top ``k`` over ``min(k, n_targets)`` (so a perfect top-k scores 1 for big baskets).

    >>> recall_at_k(np.array([0, 4, 30]), n_targets=20, k=10)
    0.2
    """
    return float(np.sum(np.asarray(ranks) < k)) / min(k, n_targets) if n_targets > 0 else 0.0


def reciprocal_rank(ranks: np.ndarray) -> float:
    """1 / (1-based) rank of the best-ranked target; 0 when no target could be ranked.

    >>> reciprocal_rank(np.array([7, 3])), reciprocal_rank(np.array([], dtype=int))
    (0.25, 0.0)
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    return 1.0 / (float(ranks.min()) + 1.0) if len(ranks) else 0.0


def ndcg_from_ranks(ranks_per_row: np.ndarray, n_targets: np.ndarray, k: int = K) -> np.ndarray:
    """NDCG@k of many rankings at once: :func:`ndcg_at_k` per row, vectorised.

    ``ranks_per_row`` is ``[rows, slots]``: each row's 0-based target ranks, padded with ``inf`` (or
    any rank >= ``k``, or NaN) where a row has fewer ranked targets than slots; ``n_targets[row]``
    counts all of the row's targets, ranked or not. Rows without a target score 0. Accepts anything
    ``np.asarray`` reads (a CPU torch tensor too) and returns float64.

    >>> inf = np.inf
    >>> ndcg_from_ranks(np.array([[0, 1], [1, inf], [0, inf], [inf, inf]]), np.array([2, 1, 2, 0])).round(4).tolist()
    [1.0, 0.6309, 0.6131, 0.0]
    >>> ndcg_from_ranks(np.zeros((0, 3)), np.zeros(0, dtype=int)).tolist()
    []
    """
    ranks = np.asarray(ranks_per_row, dtype=np.float64)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n_targets = np.asarray(n_targets, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = ranks < k  # NaN and inf compare False
        gains = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0.0) + 2.0), 0.0).sum(axis=1)
    ideal_by_count = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))))
    ideal = ideal_by_count[np.clip(n_targets, 0, k)]
    return np.divide(gains, ideal, out=np.zeros_like(gains), where=ideal > 0)


def expected_rank(scores: np.ndarray, target: int) -> float:
    """0-based rank of ``scores[target]``, ties broken at random (in expectation); ``len(scores)`` if absent.

    >>> expected_rank(np.array([0.1, 0.9, 0.5, 0.5]), 2), expected_rank(np.array([1.0, 2.0]), -1)
    (1.5, 2.0)
    """
    if target < 0 or target >= len(scores):
        return float(len(scores))
    score = scores[target]
    above = int(np.count_nonzero(scores > score))
    tied = int(np.count_nonzero(scores == score)) - 1
    return above + tied / 2
