"""Offline, prequential evaluation of recommenders on any shop's purchase history.

The protocol (fixed, so figures from different models are comparable; periods are relative to the data,
so it runs on any shop's records):

1. Baskets are processed in timestamp groups. Every basket of a group is scored with state built
   only from strictly earlier timestamps, against the whole catalogue seen so far; only then do the
   models learn the group (test-then-train).
2. Evaluated baskets: in the test period, the last 91 days of the data (from midnight UTC 91 days
   before the last timestamp; 2011-09-09 on the bundled Online Retail file), by a shopper with an
   earlier basket. Targets are the basket's distinct items (repeat purchases count); a target never
   seen before cannot be ranked and counts as a miss.
3. Ranking: model score, ties broken by 30-day popularity, then by item int (older items first).
4. Per basket: HR@10, Recall@10 (hits / min(10, |targets|)), NDCG@10 (binary relevance, ideal DCG
   over min(10, |targets|)), MRR (1 / rank of the best-ranked target over the full ranking); and the
   catalogue coverage of all top-10s (distinct items recommended / items seen by the end). The
   metric math is :mod:`learner.ranking_metrics`, shared with the live metrics.
5. **Discovery** (NDCG@10, HR@10): only targets new to the shopper count, and the shopper's past items
   are removed from the ranking (the rest keep their order, so the tie rule is the same). A basket
   whose targets are all repeats is left out; a new target never seen in the catalogue counts as a
   miss, as in 4.
6. **Cold items** (NDCG@10, HR@10): only targets first sold in the 14 days before the basket count,
   over the full ranking; baskets without such a target are left out. An item first sold in the
   basket itself is not in the catalogue yet and is not a cold target (it is a miss in 4 and 5).

The retention slice of the learners (:attr:`Protocol.probe_end`) is the first 31 days of the data (to
midnight UTC; 2010-12-01..2011-01-01 on the bundled file).

``quick=True`` scores only every 4th eligible basket (chronological order; every basket is still
learned), for CI: ~45 s of CPU instead of ~110 s for the default models, figures within ~3% of the
full run. Most of either is river's matrix factorisation learning, which quick mode does not thin.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from learner.baselines import (
    DAY,
    BiasedMFRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RecentPopularity,
    Recommender,
    RepeatKNNRecommender,
    RepeatRecommender,
)
from learner.baskets import DEFAULT_DATA_PATH, Basket, timestamp_groups
from learner.online_metrics import CLASS_METRICS, OnlinePlatt
from learner.ranking_metrics import K, hit_rate_at_k, ndcg_at_k, recall_at_k, reciprocal_rank
from ops.shop_files import Shop, load_shop

log = logging.getLogger(__name__)

QUICK_EVERY_NTH = 4
#: The test period: the last this many days of the data.
TEST_DAYS = 91.0
#: The learners' retention slice: the first this many days of the data.
PROBE_DAYS = 31.0
#: Random non-bought catalogue items per bought item in the classification figures (:class:`ClassificationTally`).
NEGATIVES = 10
#: A cold item was first sold at most this many days before the basket.
COLD_ITEM_DAYS = 14.0
METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr", "coverage@10")
METRIC_LABELS = ("NDCG@10", "HR@10", "Recall@10", "MRR", "Coverage@10")
#: The restricted views of every model's ranking (see the module docstring, 5 and 6), and their columns.
SUBSETS = ("discovery", "cold_items")
SUBSET_METRICS = ("ndcg@10", "hr@10")
SUBSET_LABELS = {"discovery": "Discovery", "cold_items": "Cold"}

#: ``total -> advance(n)``: what :func:`ops.progress.event_progress` yields, to show baskets done.
ProgressFactory = Callable[[int], Callable[[int], None]]


def start_of_day(ts: float) -> float:
    """Midnight UTC at or before epoch-seconds ``ts``.

    >>> datetime.fromtimestamp(start_of_day(datetime(2023, 3, 4, 15, 30, tzinfo=UTC).timestamp()), UTC).isoformat()
    '2023-03-04T00:00:00+00:00'
    """
    return ts - ts % DAY


def utc_iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if math.isfinite(ts) else None


@dataclass(frozen=True)
class Protocol:
    """The knobs of the protocol. :meth:`for_baskets` derives the periods from the data: that is the protocol.

    ``eval_start``/``eval_end`` bound the evaluated baskets (epoch seconds, half-open); ``probe_end`` ends
    the learners' retention slice (baskets before it); ``every_nth`` thins the evaluated baskets.
    """

    eval_start: float
    eval_end: float = math.inf  # exclusive; set it to tune on a validation period before the test period
    probe_end: float = -math.inf  # no retention slice unless derived from the data
    tiebreak_window_days: float = 30.0
    every_nth: int = 1  # evaluate every n-th eligible basket (chronological order)
    cold_item_days: float = COLD_ITEM_DAYS

    @classmethod
    def for_baskets(cls, baskets: Sequence[Basket], *, test_days: float = TEST_DAYS, probe_days: float = PROBE_DAYS,
                    **knobs) -> Protocol:
        """The protocol for this data: the test period is its last ``test_days``, the retention slice its
        first ``probe_days``, both cut at midnight UTC.

        >>> day = lambda d: datetime(2023, 1, 1, 9, 30, tzinfo=UTC).timestamp() + d * DAY
        >>> p = Protocol.for_baskets([Basket("a", day(0), (0,), "x"), Basket("a", day(200), (0,), "y")], every_nth=4)
        >>> utc_iso(p.eval_start), utc_iso(p.probe_end), p.every_nth
        ('2023-04-20T00:00:00+00:00', '2023-02-01T00:00:00+00:00', 4)
        """
        if not baskets:
            raise ValueError("no baskets: the data holds no purchases")
        first = min(basket.ts for basket in baskets)
        last = max(basket.ts for basket in baskets)
        return cls(eval_start=start_of_day(last - test_days * DAY), probe_end=start_of_day(first + probe_days * DAY),
                   **knobs)

    def describe(self) -> dict:
        described = {**asdict(self), "eval_end": None if math.isinf(self.eval_end) else self.eval_end,
                     "probe_end": None if math.isinf(self.probe_end) else self.probe_end}
        return {**described, "eval_start_utc": utc_iso(self.eval_start), "eval_end_utc": utc_iso(self.eval_end),
                "probe_end_utc": utc_iso(self.probe_end),
                "candidates": "every item seen at strictly earlier timestamps",
                "tiebreak": f"{self.tiebreak_window_days:g}-day popularity, then item int",
                "discovery": "targets new to the shopper; the shopper's past items are not candidates",
                "cold_items": f"targets first sold in the {self.cold_item_days:g} days before the basket"}


# --------------------------------------------------------------------------- ranking one basket


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
class SubsetTally:
    """NDCG@10 and HR@10 summed over the baskets of one restricted view (discovery, cold items)."""

    ndcg: float = 0.0
    hits: float = 0.0
    baskets: int = 0

    def add(self, target_ranks: np.ndarray, n_targets: int) -> None:
        self.ndcg += ndcg_at_k(target_ranks, n_targets, K)
        self.hits += hit_rate_at_k(target_ranks, K)
        self.baskets += 1

    def summary(self) -> dict:
        if not self.baskets:
            return {"ndcg@10": 0.0, "hr@10": 0.0, "baskets": 0}
        return {"ndcg@10": round(self.ndcg / self.baskets, 4), "hr@10": round(self.hits / self.baskets, 4),
                "baskets": self.baskets}


class ClassificationTally:
    """Purchase prediction, the classic way: each scored basket's bought items (1) and :data:`NEGATIVES` random other
    catalogue items per bought item (0; as the online metrics draw them), the model's scores mapped to
    probabilities by an online Platt scaling (predicted before it learns: test, then train), "bought" predicted at
    0.5 — accuracy, precision, recall and F1 over the run.
    Items a model cannot rank (score ``-inf``) are left out. Negatives are drawn from one seeded generator per
    model, so every model is asked about the same items."""

    def __init__(self, seed: int = 0) -> None:
        self.platt = OnlinePlatt()
        self.metrics = {name: metric() for name, metric in CLASS_METRICS.items()}
        self.rng = np.random.default_rng(seed)
        self.examples = 0

    def add(self, scores: np.ndarray, targets: np.ndarray) -> None:
        others = np.setdiff1d(np.arange(len(scores)), targets)
        wanted = min(NEGATIVES * len(targets), len(others))
        negatives = self.rng.choice(others, size=wanted, replace=False) if wanted else others[:0]
        examples = [(True, float(scores[t])) for t in targets] + [(False, float(scores[n])) for n in negatives]
        examples = [(label, score) for label, score in examples if math.isfinite(score)]
        predictions = [self.platt.predict_one(score) >= 0.5 for _, score in examples]
        for (label, _), predicted in zip(examples, predictions, strict=True):
            for metric in self.metrics.values():
                metric.update(label, predicted)
        for label, score in examples:
            self.platt.learn_one(score, label)
        self.examples += len(examples)

    def summary(self) -> dict:
        return {**{name: round(metric.get(), 4) for name, metric in self.metrics.items()}, "examples": self.examples,
                "threshold": 0.5, "negatives_per_bought_item": NEGATIVES}


@dataclass
class ModelTally:
    """Running sums of one model's per-basket metrics and the items it recommended."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS[:4], 0.0))
    baskets: int = 0
    recommended: set[int] = field(default_factory=set)
    seconds: float = 0.0  # spent in the model's own learn and score calls
    weekly_ndcg: dict[str, list[float]] = field(default_factory=dict)  # week -> [sum, baskets]
    discovery: SubsetTally = field(default_factory=SubsetTally)
    cold_items: SubsetTally = field(default_factory=SubsetTally)
    classification: ClassificationTally = field(default_factory=ClassificationTally)

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
                "coverage@10": round(coverage, 4), "baskets": self.baskets, "seconds": round(self.seconds, 1),
                "discovery": self.discovery.summary(), "cold_items": self.cold_items.summary(),
                "classification": self.classification.summary()}

    def weekly_summary(self) -> dict[str, float]:
        return {week: round(total / n, 4) for week, (total, n) in sorted(self.weekly_ndcg.items())}


class Catalogue:
    """The items seen so far, as the sorted candidate vector every model scores, and when each was first sold."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._candidates = np.zeros(0, dtype=np.int64)
        self.first_sold: dict[int, float] = {}

    def learn(self, baskets: Iterable[Basket]) -> None:
        before = len(self._seen)
        for basket in baskets:
            self._seen.update(basket.items)
            for item in basket.items:
                self.first_sold.setdefault(item, basket.ts)
        if len(self._seen) != before:
            self._candidates = np.array(sorted(self._seen), dtype=np.int64)

    @property
    def candidates(self) -> np.ndarray:
        return self._candidates

    def positions(self, items: Iterable[int]) -> np.ndarray:
        """Positions in :attr:`candidates` of those ``items`` that are in the catalogue."""
        items = np.fromiter(items, dtype=np.int64)
        at = np.searchsorted(self._candidates, items)
        inside = at < len(self._candidates)
        at, items = at[inside], items[inside]
        return at[self._candidates[at] == items]

    def cold(self, items: Iterable[int], now: float, days: float) -> tuple[int, ...]:
        """Those ``items`` first sold within ``days`` before ``now`` (and so in the catalogue).

        >>> catalogue = Catalogue()
        >>> catalogue.learn([Basket("a", 0.0, (0,), "x"), Basket("a", 10 * DAY, (1,), "y")])
        >>> catalogue.cold((0, 1, 2), now=15 * DAY, days=14)
        (1,)
        """
        return tuple(item for item in items if now - days * DAY <= self.first_sold.get(item, math.inf) < now)

    def __len__(self) -> int:
        return len(self._candidates)


@dataclass(frozen=True)
class BasketTargets:
    """What one evaluated basket asks of every model's ranking (positions in the catalogue's candidates)."""

    basket: Basket
    targets: np.ndarray  #: rankable targets
    new_items: tuple[int, ...]  #: targets new to the shopper (rankable or not)
    new_targets: np.ndarray  #: the rankable ones
    past: np.ndarray  #: bool per candidate: the shopper bought it before
    cold_targets: np.ndarray  #: targets first sold in the cold window (all rankable)

    @classmethod
    def of(cls, basket: Basket, catalogue: Catalogue, past_items: set[int], cold_item_days: float) -> BasketTargets:
        new_items = tuple(item for item in basket.items if item not in past_items)
        past = np.zeros(len(catalogue), dtype=bool)
        past[catalogue.positions(past_items)] = True
        return cls(basket, catalogue.positions(basket.items), new_items, catalogue.positions(new_items), past,
                   catalogue.positions(catalogue.cold(basket.items, basket.ts, cold_item_days)))


def ranks_of(order: np.ndarray) -> np.ndarray:
    """0-based rank of every candidate position, from the positions best first.

    >>> ranks_of(np.array([2, 0, 1])).tolist()
    [1, 2, 0]
    """
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    return rank_of


def tally_ranking(tally: ModelTally, order: np.ndarray, asked: BasketTargets, candidates: np.ndarray) -> None:
    """Add one model's ranking of one basket to its tally: the main protocol, discovery and cold items."""
    basket = asked.basket
    rank_of = ranks_of(order)
    tally.add(rank_of[asked.targets], len(basket.items), candidates[order[:K]], week_of(basket.ts))
    if asked.new_items:
        # the shopper's past items leave the ranking; the others keep their order (the same tie rule)
        discovery_rank = np.full(len(order), len(order), dtype=np.int64)
        unseen_order = order[~asked.past[order]]
        discovery_rank[unseen_order] = np.arange(len(unseen_order))
        tally.discovery.add(discovery_rank[asked.new_targets], len(asked.new_items))
    if len(asked.cold_targets):
        tally.cold_items.add(rank_of[asked.cold_targets], len(asked.cold_targets))


# --------------------------------------------------------------------------- the prequential loop


def is_evaluated(basket: Basket, known_shoppers: set[str] | dict[str, set[int]], protocol: Protocol) -> bool:
    """In the evaluation period, and the shopper bought something at an earlier timestamp."""
    return protocol.eval_start <= basket.ts < protocol.eval_end and basket.user_id in known_shoppers


def prequential(models: list[Recommender], baskets: Iterable[Basket], protocol: Protocol | None = None, *,
                on_progress: Callable[[int], None] | None = None) -> tuple[dict[str, ModelTally], int]:
    """Score each timestamp group with every model, then let every model learn it (test-then-train).

    ``protocol`` defaults to :meth:`Protocol.for_baskets` of ``baskets``. ``on_progress(n)`` is called
    with the number of baskets of each group once it is done. Returns each model's tally and the number
    of items seen by the end.
    """
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    if protocol is None:
        baskets = list(baskets)
        protocol = Protocol.for_baskets(baskets)
    tallies = {name: ModelTally() for name in names}
    catalogue = Catalogue()
    tiebreak_popularity = RecentPopularity(protocol.tiebreak_window_days)
    past_items: dict[str, set[int]] = {}  # what each shopper bought at earlier timestamps
    eligible = 0
    for group_number, group in enumerate(timestamp_groups(baskets)):
        to_score = []
        for basket in group:
            if is_evaluated(basket, past_items, protocol):
                if eligible % protocol.every_nth == 0:
                    to_score.append(basket)
                eligible += 1
        if to_score:
            tiebreak_popularity.advance_to(group[0].ts)
            asked = [BasketTargets.of(basket, catalogue, past_items[basket.user_id], protocol.cold_item_days)
                     for basket in to_score]
            score_group(models, asked, catalogue, tiebreak_popularity.scores(catalogue.candidates), tallies)
        for model in models:
            started = time.perf_counter()
            model.learn(group)
            tallies[model.name].seconds += time.perf_counter() - started
        catalogue.learn(group)
        tiebreak_popularity.learn(group)
        for basket in group:
            past_items.setdefault(basket.user_id, set()).update(basket.items)
        if on_progress is not None:
            on_progress(len(group))
        if group_number % 2000 == 0:
            log.info("group %d: %d items, %d eligible baskets so far", group_number, len(catalogue), eligible)
    return tallies, len(catalogue)


def score_group(models: list[Recommender], asked: list[BasketTargets], catalogue: Catalogue, tiebreak: np.ndarray,
                tallies: dict[str, ModelTally]) -> None:
    """Rank the whole catalogue for each basket with each model and tally where its targets landed."""
    candidates = catalogue.candidates
    for basket_targets in asked:
        for model in models:
            started = time.perf_counter()
            scores = model.score(basket_targets.basket.user_id, candidates)
            tallies[model.name].seconds += time.perf_counter() - started
            if scores.shape != candidates.shape:
                raise ValueError(f"{model.name} returned {scores.shape} scores for {candidates.shape} candidates")
            tally_ranking(tallies[model.name], ranking_order(scores, tiebreak), basket_targets, candidates)
            tallies[model.name].classification.add(scores, basket_targets.targets)


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
             out_dir: Path | None = None, shop: Shop | None = None, progress: ProgressFactory | None = None) -> dict:
    """Run the protocol and return the JSON-able result.

    ``data_path`` is a file of contract records or the Online Retail file (:func:`ops.shop_files.load_shop`);
    pass ``shop`` when it is already loaded (``data_path`` then only labels the result). ``progress`` is a
    factory ``total -> advance(n)`` (:func:`ops.progress.event_progress`) to show the baskets done.
    With ``out_dir``, also write ``eval.md`` (the table), ``eval.json`` (the result) and ``eval.png``
    (the summary bars and NDCG@10 week by week).
    """
    started = time.perf_counter()
    shop = shop if shop is not None else load_shop(data_path)
    protocol = Protocol.for_baskets(shop.baskets, every_nth=QUICK_EVERY_NTH if quick else 1)
    on_progress = progress(len(shop.baskets)) if progress is not None else None
    tallies, n_items = prequential(models, shop.baskets, protocol, on_progress=on_progress)
    result = {
        "models": {name: tally.summary(n_items) for name, tally in tallies.items()},
        "protocol": {**protocol.describe(), "quick": quick, "data": str(data_path), "source": shop.source,
                     "baskets": len(shop.baskets), "items": n_items, "skipped_rows": dict(shop.skipped)},
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
    """The result as a markdown table, one row per model, best NDCG@10 first; discovery and cold-item
    columns follow the main metrics ("-" for a model without them).

    >>> m = {"ndcg@10": 0.5, "hr@10": 1.0, "recall@10": 0.5, "mrr": 1.0, "coverage@10": 0.1, "baskets": 2,
    ...      "seconds": 0.5, "discovery": {"ndcg@10": 0.25, "hr@10": 0.5, "baskets": 2},
    ...      "cold_items": {"ndcg@10": 0.0, "hr@10": 0.0, "baskets": 1}}
    >>> print(markdown_table({"models": {"m": m}, "protocol": {"quick": True}, "seconds": 1.0}).splitlines()[4])
    | m | 0.5000 | 1.0000 | 0.5000 | 1.0000 | 0.1000 | 0.2500 | 0.5000 | 0.0000 | 0.0000 | 2 | 0.5 |
    """
    rows = sorted(result["models"].items(), key=lambda kv: -kv[1]["ndcg@10"])
    mode = "quick" if result["protocol"].get("quick") else "full"
    subset_labels = [f"{SUBSET_LABELS[subset]} {label}" for subset in SUBSETS for label in METRIC_LABELS[:2]]
    lines = [f"# Offline evaluation ({mode} protocol, {result['seconds']:.0f} s)", "",
             "| model | " + " | ".join((*METRIC_LABELS, *subset_labels)) + " | baskets | model seconds |",
             "|---|" + "---:|" * (len(METRICS) + len(subset_labels) + 2)]
    for name, m in rows:
        subset_cells = [f"{m[subset][metric]:.4f}" if subset in m else "-" for subset in SUBSETS
                        for metric in SUBSET_METRICS]
        lines.append(f"| {name} | " + " | ".join([f"{m[metric]:.4f}" for metric in METRICS] + subset_cells)
                     + f" | {m['baskets']} | {m.get('seconds', 0.0):.1f} |")
    counts = next((m for _, m in rows if "discovery" in m), None)
    if counts is not None:
        lines += ["", f"Discovery: {counts['discovery']['baskets']} baskets with a target new to the shopper, "
                      "ranked without the shopper's past items. "
                      f"Cold: {counts['cold_items']['baskets']} baskets with a target first sold in the "
                      f"{result['protocol'].get('cold_item_days', COLD_ITEM_DAYS):g} days before."]
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
    figure.suptitle(f"Prequential evaluation on {Path(result['protocol'].get('data', 'the data')).name} "
                    f"({mode} protocol)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
