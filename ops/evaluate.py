"""Offline, prequential evaluation of recommenders on the Online Retail baskets.

The protocol (fixed, so figures from different models are comparable):

1. Baskets are processed in timestamp groups. Every basket of a group is scored with state built
   only from strictly earlier timestamps, against the whole catalogue seen so far; only then do the
   models learn the group (test-then-train).
2. Evaluated baskets: timestamp >= 2011-09-09 (the last three months) and a shopper with an earlier
   basket. Targets are the basket's distinct items (repeat purchases count); a target never seen
   before cannot be ranked and counts as a miss.
3. Ranking: model score, ties broken by 30-day popularity, then by item int (older items first).
4. Per basket: HR@10, Recall@10 (hits / min(10, |targets|)), NDCG@10 (binary relevance, ideal DCG
   over min(10, |targets|)), MRR (1 / rank of the best-ranked target over the full ranking); and the
   catalogue coverage of all top-10s (distinct items recommended / items seen by the end).

``quick=True`` scores only every 4th eligible basket (chronological order; every basket is still
learned), for CI: ~80 s of CPU instead of ~110 s for the default models, figures within ~3% of the
full run. Most of either is river's matrix factorisation learning, which quick mode does not thin.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from learner.baselines import (
    BiasedMFRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RecentPopularity,
    Recommender,
    RepeatKNNRecommender,
    RepeatRecommender,
)
from learner.baskets import DEFAULT_DATA_PATH, Basket, load_baskets, timestamp_groups

log = logging.getLogger(__name__)

EVAL_START = datetime(2011, 9, 9, tzinfo=UTC).timestamp()
QUICK_EVERY_NTH = 4
K = 10
METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr", "coverage@10")
METRIC_LABELS = ("NDCG@10", "HR@10", "Recall@10", "MRR", "Coverage@10")


@dataclass(frozen=True)
class Protocol:
    """The knobs of the protocol; the defaults are the protocol."""

    eval_start: float = EVAL_START
    eval_end: float = math.inf  # exclusive; set it to tune on a validation period before the test period
    tiebreak_window_days: float = 30.0
    every_nth: int = 1  # evaluate every n-th eligible basket (chronological order)

    def describe(self) -> dict:
        described = {**asdict(self), "eval_end": None if math.isinf(self.eval_end) else self.eval_end}
        return {**described, "eval_start_utc": datetime.fromtimestamp(self.eval_start, UTC).isoformat(),
                "candidates": "every item seen at strictly earlier timestamps",
                "tiebreak": f"{self.tiebreak_window_days:g}-day popularity, then item int"}


# --------------------------------------------------------------------------- metrics of one ranked basket


def dcg(ranks: np.ndarray, k: int) -> float:
    """Discounted cumulative gain of hits at 0-based ``ranks`` (binary relevance), cut at ``k``.

    >>> round(dcg(np.array([0, 2, 12]), k=10), 4)
    1.5
    """
    hits = ranks[ranks < k]
    return float(np.sum(1.0 / np.log2(hits + 2.0)))


def ndcg_at_k(ranks: np.ndarray, n_targets: int, k: int) -> float:
    """DCG over the ideal DCG of ``min(k, n_targets)`` hits at the top.

    >>> ndcg_at_k(np.array([0, 1]), n_targets=2, k=10), round(ndcg_at_k(np.array([1]), n_targets=1, k=10), 4)
    (1.0, 0.6309)
    """
    ideal = dcg(np.arange(min(k, n_targets)), k)
    return dcg(ranks, k) / ideal if ideal > 0 else 0.0


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """1 when any target is in the top ``k``.

    >>> hit_rate_at_k(np.array([12, 3]), k=10), hit_rate_at_k(np.array([10]), k=10)
    (1.0, 0.0)
    """
    return float(np.any(ranks < k))


def recall_at_k(ranks: np.ndarray, n_targets: int, k: int) -> float:
    """Hits in the top ``k`` over ``min(k, n_targets)`` (so a perfect top-k scores 1 for big baskets).

    >>> recall_at_k(np.array([0, 4, 30]), n_targets=20, k=10)
    0.2
    """
    return float(np.sum(ranks < k)) / min(k, n_targets) if n_targets else 0.0


def reciprocal_rank(ranks: np.ndarray) -> float:
    """1 / (1-based) rank of the best-ranked target; 0 when no target could be ranked.

    >>> reciprocal_rank(np.array([7, 3])), reciprocal_rank(np.array([], dtype=int))
    (0.25, 0.0)
    """
    return 1.0 / (float(ranks.min()) + 1.0) if len(ranks) else 0.0


def week_of(ts: float) -> str:
    """The Monday (ISO date) of the week holding epoch-seconds ``ts``, to chart quality over time.

    >>> week_of(datetime(2011, 9, 9, 15, tzinfo=UTC).timestamp())
    '2011-09-05'
    """
    day = datetime.fromtimestamp(ts, UTC).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def ranking_order(scores: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Candidate positions best first: by score, then tiebreak (both descending), then position.

    >>> ranking_order(np.array([1.0, 2.0, 1.0, 1.0]), np.array([0.0, 0.0, 5.0, 0.0])).tolist()
    [1, 2, 0, 3]
    """
    return np.lexsort((np.arange(len(scores)), -tiebreak, -scores))


# --------------------------------------------------------------------------- accumulating over baskets


@dataclass
class ModelTally:
    """Running sums of one model's per-basket metrics and the items it recommended."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS[:4], 0.0))
    baskets: int = 0
    recommended: set[int] = field(default_factory=set)
    seconds: float = 0.0  # spent in the model's own learn and score calls
    weekly_ndcg: dict[str, list[float]] = field(default_factory=dict)  # week -> [sum, baskets]

    def add(self, target_ranks: np.ndarray, n_targets: int, top_k: np.ndarray, week: str = "") -> None:
        """Add one basket: 0-based ranks of its rankable targets, its number of targets, its top-k items."""
        ndcg = ndcg_at_k(target_ranks, n_targets, K)
        week_total = self.weekly_ndcg.setdefault(week, [0.0, 0])
        week_total[0] += ndcg
        week_total[1] += 1
        self.sums["ndcg@10"] += ndcg
        self.sums["hr@10"] += hit_rate_at_k(target_ranks, K)
        self.sums["recall@10"] += recall_at_k(target_ranks, n_targets, K)
        self.sums["mrr"] += reciprocal_rank(target_ranks)
        self.recommended.update(top_k.tolist())
        self.baskets += 1

    def summary(self, n_items: int) -> dict:
        means = {name: total / self.baskets if self.baskets else 0.0 for name, total in self.sums.items()}
        coverage = len(self.recommended) / n_items if n_items else 0.0
        return {**{name: round(value, 4) for name, value in means.items()},
                "coverage@10": round(coverage, 4), "baskets": self.baskets, "seconds": round(self.seconds, 1)}

    def weekly_summary(self) -> dict[str, float]:
        return {week: round(total / n, 4) for week, (total, n) in sorted(self.weekly_ndcg.items())}


class Catalogue:
    """The items seen so far, as the sorted candidate vector every model scores."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._candidates = np.zeros(0, dtype=np.int64)

    def learn(self, baskets: Iterable[Basket]) -> None:
        before = len(self._seen)
        for basket in baskets:
            self._seen.update(basket.items)
        if len(self._seen) != before:
            self._candidates = np.array(sorted(self._seen), dtype=np.int64)

    @property
    def candidates(self) -> np.ndarray:
        return self._candidates

    def positions(self, items: tuple[int, ...]) -> np.ndarray:
        """Positions in :attr:`candidates` of those ``items`` that are in the catalogue."""
        items = np.asarray(items, dtype=np.int64)
        at = np.searchsorted(self._candidates, items)
        inside = at < len(self._candidates)
        at, items = at[inside], items[inside]
        return at[self._candidates[at] == items]

    def __len__(self) -> int:
        return len(self._candidates)


# --------------------------------------------------------------------------- the prequential loop


def is_evaluated(basket: Basket, known_shoppers: set[str], protocol: Protocol) -> bool:
    """In the evaluation period, and the shopper bought something at an earlier timestamp."""
    return protocol.eval_start <= basket.ts < protocol.eval_end and basket.user_id in known_shoppers


def prequential(models: list[Recommender], baskets: Iterable[Basket], protocol: Protocol = Protocol()
                ) -> tuple[dict[str, ModelTally], int]:
    """Score each timestamp group with every model, then let every model learn it (test-then-train).

    Returns each model's tally and the number of items seen by the end.
    """
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    tallies = {name: ModelTally() for name in names}
    catalogue = Catalogue()
    tiebreak_popularity = RecentPopularity(protocol.tiebreak_window_days)
    known_shoppers: set[str] = set()
    eligible = 0
    for group_number, group in enumerate(timestamp_groups(baskets)):
        to_score = []
        for basket in group:
            if is_evaluated(basket, known_shoppers, protocol):
                if eligible % protocol.every_nth == 0:
                    to_score.append(basket)
                eligible += 1
        if to_score:
            tiebreak_popularity.advance_to(group[0].ts)
            score_group(models, to_score, catalogue, tiebreak_popularity.scores(catalogue.candidates), tallies)
        for model in models:
            started = time.perf_counter()
            model.learn(group)
            tallies[model.name].seconds += time.perf_counter() - started
        catalogue.learn(group)
        tiebreak_popularity.learn(group)
        known_shoppers.update(basket.user_id for basket in group)
        if group_number % 2000 == 0:
            log.info("group %d: %d items, %d eligible baskets so far", group_number, len(catalogue), eligible)
    return tallies, len(catalogue)


def score_group(models: list[Recommender], baskets: list[Basket], catalogue: Catalogue, tiebreak: np.ndarray,
                tallies: dict[str, ModelTally]) -> None:
    """Rank the whole catalogue for each basket with each model and tally where its targets landed."""
    candidates = catalogue.candidates
    for basket in baskets:
        targets = catalogue.positions(basket.items)
        week = week_of(basket.ts)
        for model in models:
            started = time.perf_counter()
            scores = model.score(basket.user_id, candidates)
            tallies[model.name].seconds += time.perf_counter() - started
            if scores.shape != candidates.shape:
                raise ValueError(f"{model.name} returned {scores.shape} scores for {candidates.shape} candidates")
            order = ranking_order(scores, tiebreak)
            rank_of = np.empty(len(order), dtype=np.int64)
            rank_of[order] = np.arange(len(order))
            tallies[model.name].add(rank_of[targets], len(basket.items), candidates[order[:K]], week)


# --------------------------------------------------------------------------- entry points


def default_models() -> list[Recommender]:
    """The baselines every new model is compared with (their settings are explained in :mod:`learner.baselines`)."""
    return [
        PopularityRecommender(),
        RepeatRecommender(),
        ItemKNNRecommender(),
        RepeatKNNRecommender(),
        BiasedMFRecommender(),
    ]


def run_eval(models: list[Recommender], *, quick: bool, data_path: Path = DEFAULT_DATA_PATH,
             out_dir: Path | None = None) -> dict:
    """Run the protocol and return the JSON-able result.

    With ``out_dir``, also write ``eval.md`` (the table), ``eval.json`` (the result) and ``eval.png``
    (the summary bars and NDCG@10 week by week).
    """
    started = time.perf_counter()
    protocol = Protocol(every_nth=QUICK_EVERY_NTH if quick else 1)
    baskets, _ = load_baskets(data_path)
    tallies, n_items = prequential(models, baskets, protocol)
    result = {
        "models": {name: tally.summary(n_items) for name, tally in tallies.items()},
        "protocol": {**protocol.describe(), "quick": quick, "data": str(data_path), "baskets": len(baskets),
                     "items": n_items},
        "weekly_ndcg@10": {name: tally.weekly_summary() for name, tally in tallies.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("evaluation done in %.1f s: %s", result["seconds"], result["models"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.md").write_text(markdown_table(result))
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
        write_plot(result, out_dir / "eval.png")
    return result


def markdown_table(result: dict) -> str:
    """The result as a markdown table, one row per model, best NDCG@10 first.

    >>> print(markdown_table({"models": {"m": {"ndcg@10": 0.5, "hr@10": 1.0, "recall@10": 0.5, "mrr": 1.0,
    ...     "coverage@10": 0.1, "baskets": 2, "seconds": 0.5}}, "protocol": {"quick": True}, "seconds": 1.0}
    ... ).splitlines()[-1])
    | m | 0.5000 | 1.0000 | 0.5000 | 1.0000 | 0.1000 | 2 | 0.5 |
    """
    rows = sorted(result["models"].items(), key=lambda kv: -kv[1]["ndcg@10"])
    mode = "quick" if result["protocol"].get("quick") else "full"
    lines = [f"# Offline evaluation ({mode} protocol, {result['seconds']:.0f} s)", "",
             "| model | " + " | ".join(METRIC_LABELS) + " | baskets | model seconds |",
             "|---|" + "---:|" * (len(METRICS) + 2)]
    lines += [f"| {name} | " + " | ".join(f"{m[metric]:.4f}" for metric in METRICS)
              + f" | {m['baskets']} | {m.get('seconds', 0.0):.1f} |" for name, m in rows]
    return "\n".join(lines) + "\n"


def draw_model_panels(result: dict, bars, weeks) -> None:
    """On two matplotlib axes: NDCG@10 and HR@10 per model (best at the top), and NDCG@10 week by week."""
    names = sorted(result["models"], key=lambda name: result["models"][name]["ndcg@10"])
    positions = np.arange(len(names))
    for offset, metric, label in ((-0.2, "ndcg@10", "NDCG@10"), (0.2, "hr@10", "HR@10")):
        bars.barh(positions + offset, [result["models"][name][metric] for name in names], height=0.4, label=label)
    bars.set_yticks(positions, names)
    bars.set_xlabel("mean over evaluated baskets")
    bars.legend(loc="lower right")
    for name in reversed(names):
        weekly = result["weekly_ndcg@10"].get(name, {})
        weeks.plot([datetime.fromisoformat(week) for week in weekly], list(weekly.values()), marker=".", label=name)
    weeks.set_ylabel("NDCG@10 (week mean)")
    weeks.legend(fontsize="small")
    weeks.tick_params(axis="x", labelrotation=30)


def write_plot(result: dict, path: Path) -> None:
    """Two panels as PNG: NDCG@10 and HR@10 per model, and each model's NDCG@10 week by week."""
    import matplotlib  # imported here: only plotting needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, weeks) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
    draw_model_panels(result, bars, weeks)
    mode = "quick" if result["protocol"].get("quick") else "full"
    figure.suptitle(f"Prequential evaluation on Online Retail ({mode} protocol)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
