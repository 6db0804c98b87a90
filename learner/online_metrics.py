"""Online quality of the live recommender, measured test-then-train, as river metrics over rolling windows.

Everything here follows the prequential rule: an event is scored with the state from *before* it,
the metrics are updated, and only then does anything learn from it. :meth:`PrequentialEvaluator.learn_one`
is the one place that does this for purchases; labelled examples (:meth:`~PrequentialEvaluator.update_scored`)
are calibrated by a model that predicts before it learns as well.

What is measured, and over what:

* **Served quality** (``served.*``, label ``model_version``): the headline ranking figures — every
  list serving showed, joined with the shopper's next basket and compared with what the repeat
  baseline would have shown at the same moment. :class:`learner.served_quality.ServedQuality`
  (the :class:`OnlineMonitor` feeds it) documents the join.
* **Baseline ranking** (``baseline.hr_at_10``, ``baseline.ndcg_at_10``, ``baseline.mrr``): a model-free
  reference, *not* what is served. Each evaluated purchase is ranked against the
  whole catalogue by a :class:`Scorer` (by default :class:`FeatureScorer`, the model-free behavioural
  blend). One invoice line is one target; a basket (one shopper, one timestamp) is scored once, before
  any of its lines is learned, which is both the prequential rule and what keeps this cheap (one
  catalogue scoring per basket, not per line). An item never seen before cannot be ranked and counts
  as a miss. Ties are broken at random in expectation (rank = items above + half the ties), so a
  scorer that knows nothing gets the rank of chance, not of luck. Rolling means over the last
  ``window`` evaluated purchases.
* **Classification** (``roc_auc``, ``log_loss``, labels ``source`` and ``scorer``): river's exact
  ``RollingROCAUC`` and ``LogLoss`` in a ``utils.Rolling`` window over labelled examples.
  ``source=purchases`` (``scorer=feature_baseline``): the bought item (1) and ``negatives`` items drawn
  uniformly from the catalogue (0), scored from the baseline's score vector; ``source=impressions``
  (``scorer=served``): every item serving showed, with the score it was shown with, 1 when it was
  clicked within the label window. Scores are not probabilities, so an online Platt scaling
  (:class:`OnlinePlatt`, one per source, predicting before it learns) maps them to one; log loss therefore measures how
  *predictable* the outcome is from the score, AUC (invariant to the calibration) how well the score
  orders it. (``utils.Rolling(metrics.ROCAUC)`` was measured and rejected: with its default 10 fixed
  thresholds on [0, 1] it read 0.76 for an exact 0.82 when probabilities cluster, as calibrated ones
  do, at 20× the cost; 50 thresholds read 0.815 at 75× the cost.) Beside them, the classic ``accuracy``,
  ``precision``, ``recall`` and ``f1`` of the prediction "chosen" at the calibrated probability's 0.5
  threshold (river's metrics in the same rolling window). With few positives per group (one bought item
  against ``negatives``, a click among ten shown), a calibrated probability rarely passes 0.5, so recall
  and F1 are low by construction: read AUC and log loss for ranking quality.
* **Impression CTR** (``ctr``): share of impressions with a click, add-to-cart or purchase carrying their
  ``rec_id`` within ``label_window_s`` of event time (the learner's label window:
  :class:`streams.settings.JoinSettings`); counted when the window closes, so recent
  impressions are not counted before their clicks could arrive. Impressions and responses travel on
  different topics and partitions, which a worker reads at different paces (one topic may be read
  hours of event time ahead of the other), so each stream keeps its own event time: an impression
  closes only when the *responses'* event time passes its window plus ``grace_s``; a response that
  comes later still is counted in ``impressions_late_responses``, the sign that the grace is too
  short. A response may also arrive before its impression: it waits for it until the *impressions'*
  event time passes the response's plus ``grace_s`` (an impression precedes its responses).
* **Explanation helpfulness** (``explanation_helpful_rate``, label ``style``): rolling share of helpful
  votes per explanation style.

``snapshot(ts)`` turns the current values into :class:`~streams.records.MetricSnapshot` records;
``window`` is how many observations a value summarises (0: a running total since start).
"""

from __future__ import annotations

import logging
import math
import random
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from river import metrics, stats, utils

from learner.drift import DriftMonitor, Surprise
from learner.explanation_bandit import ExplanationBandit, segment_of
from learner.features import BehaviourFeatures
from learner.ranking_metrics import expected_rank, hit_rate_at_k, ndcg_at_k, reciprocal_rank
from learner.served_quality import ServedQuality
from streams.records import DriftAlarm, ExplanationFeedback, Impression, Interaction, Item, MetricSnapshot
from streams.settings import DEFAULT_LABEL_WINDOW_S

log = logging.getLogger(__name__)

K = 10
#: Interaction types that count as a response to an impression (a "click" for CTR).
RESPONSE_TYPES = frozenset({"click", "add_to_cart", "purchase"})
#: The ``scorer`` label of figures from scores serving showed, and the prefix of the model-free baseline's.
SERVED, BASELINE = "served", "baseline"
#: The classic metrics of the chosen / not chosen prediction at the calibrated 0.5 threshold (rolling windows).
CLASS_METRICS = {"accuracy": metrics.Accuracy, "precision": metrics.Precision, "recall": metrics.Recall,
                 "f1": metrics.F1}


# --------------------------------------------------------------------------- ranking of one purchase


@dataclass(frozen=True, slots=True)
class RankOutcome:
    """Where one purchased item ranked among ``n_items``; ``score`` is None when it could not be ranked.

    >>> o = RankOutcome(rank=1.0, n_items=100, score=0.7)
    >>> o.hit, round(o.ndcg, 4), o.reciprocal_rank
    (True, 0.6309, 0.5)
    >>> RankOutcome(rank=100.0, n_items=100, score=None).reciprocal_rank
    0.0
    """

    rank: float
    n_items: int
    score: float | None
    k: int = K

    @property
    def ranked(self) -> bool:
        return self.score is not None

    @property
    def _ranks(self) -> np.ndarray:
        """The target's rank as :mod:`learner.ranking_metrics` reads it: absent when it was not ranked."""
        return np.array([self.rank] if self.ranked else [], dtype=np.float64)

    @property
    def hit(self) -> bool:
        return hit_rate_at_k(self._ranks, self.k) == 1.0

    @property
    def ndcg(self) -> float:
        """Binary relevance, one target: the ideal DCG is 1."""
        return ndcg_at_k(self._ranks, n_targets=1, k=self.k)

    @property
    def reciprocal_rank(self) -> float:
        return reciprocal_rank(self._ranks)


# --------------------------------------------------------------------------- what scores purchases


class Scorer(Protocol):
    """What the evaluator ranks purchases with: a score for every catalogue item, and learning."""

    def item_position(self, item_id: str) -> int:
        """Position of ``item_id`` in :meth:`score_all`'s vector, -1 when it is not in the catalogue yet."""

    def score_all(self, user_id: str, now: float) -> np.ndarray:
        """A score for every catalogue item for ``user_id`` at event time ``now``; higher is better."""

    def learn_one(self, interaction: Interaction) -> None:
        """Learn from one event (called only after the event was scored)."""

    def baskets_before(self, user_id: str) -> int:
        """How many baskets the shopper bought before (for the explanation segments)."""


class FeatureScorer:
    """The behavioural blend ``log1p(repeat) + 0.5 knn + 0.1 popularity`` over :class:`BehaviourFeatures`.

    It needs no model, so the worker can measure ranking quality from the first event, with no
    GPU and no adapter; it is a baseline, not what serving ranks with (its figures are ``baseline.*``).
    Pass the learner's ``features`` with ``learn=False`` to share them instead of keeping a second
    copy (the owner then learns them).

    >>> scorer = FeatureScorer()
    >>> for i, (user, item) in enumerate([("u1", "A"), ("u1", "B"), ("u2", "A")]):
    ...     scorer.learn_one(Interaction(f"e{i}", user, item, "purchase", 1.3e9 + 86400 * i))
    >>> scorer.score_all("u1", now=1.3e9 + 86400 * 3).astype(float).round(3).tolist()
    [0.782, 0.749]
    """

    #: The ``scorer`` label of figures computed from its scores.
    name = "feature_baseline"

    def __init__(self, features: BehaviourFeatures | None = None, *, weights: Sequence[float] = (1.0, 0.5, 0.1),
                 learn: bool = True) -> None:
        self.features = features if features is not None else BehaviourFeatures()
        self.weights = np.asarray(weights, dtype=np.float32)
        self.learn = learn

    def item_position(self, item_id: str) -> int:
        return self.features.index.index_of(item_id)

    def score_all(self, user_id: str, now: float) -> np.ndarray:
        self.features.advance_to(now)  # close earlier baskets; a basket at `now` stays unseen
        candidates = np.arange(len(self.features.index))
        return self.features.matrix(user_id, candidates, now=now) @ self.weights

    def learn_one(self, interaction: Interaction) -> None:
        if self.learn:
            self.features.learn_interaction(interaction.user_id, interaction.item_id, interaction.type,
                                            interaction.ts)

    def baskets_before(self, user_id: str) -> int:
        return len(self.features.long_history.recent(user_id))


# --------------------------------------------------------------------------- the evaluator


class Reliability:
    """The last ``window`` (calibrated probability, outcome) pairs, binned: a reliability diagram and the expected
    calibration error (ECE: the bins' mean |predicted − observed|, weighted by their share of the pairs).

    >>> r = Reliability(window=100, bins=2)
    >>> for p, y in [(0.2, False), (0.2, False), (0.2, True), (0.9, True)]:
    ...     r.update(p, y)
    >>> [(round(b.predicted, 2), round(b.observed, 2), b.n) for b in r.diagram()], round(r.ece(), 4)
    ([(0.2, 0.33, 3), (0.9, 1.0, 1)], 0.125)
    """

    def __init__(self, window: int, bins: int = 10) -> None:
        self.bins = bins
        self._pairs: deque[tuple[float, bool]] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._pairs)

    def update(self, probability: float, outcome: bool) -> None:
        self._pairs.append((probability, outcome))

    def diagram(self) -> list[ReliabilityBin]:
        """The non-empty bins, lowest first: mean predicted probability, observed rate, pairs."""
        sums: dict[int, list[float]] = {}
        for probability, outcome in self._pairs:
            row = sums.setdefault(min(int(probability * self.bins), self.bins - 1), [0.0, 0.0, 0])
            row[0] += probability
            row[1] += outcome
            row[2] += 1
        return [ReliabilityBin((b + 0.5) / self.bins, p / n, o / n, int(n)) for b, (p, o, n) in sorted(sums.items())]

    def ece(self) -> float:
        total = len(self._pairs)
        if not total:
            return math.nan
        return sum(b.n / total * abs(b.predicted - b.observed) for b in self.diagram())


@dataclass(frozen=True)
class ReliabilityBin:
    centre: float
    predicted: float
    observed: float
    n: int


class OnlinePlatt:
    """Online Platt scaling: ``P(y=1 | score) = sigmoid(a * z + b)`` with ``z`` the standardised score.

    Plain SGD on two weights (river's ``LogisticRegression`` in a pipeline costs ~100 µs per event
    through dicts; this costs a few). ``predict_one`` before ``learn_one``: test, then train.

    >>> platt = OnlinePlatt()
    >>> platt.predict_one(3.0)
    0.5
    >>> for _ in range(500):
    ...     platt.learn_one(2.0, True); platt.learn_one(0.0, False)
    >>> platt.predict_one(2.0) > 0.9 > 0.1 > platt.predict_one(0.0)
    True
    """

    def __init__(self, lr: float = 0.05) -> None:
        self.lr = lr
        self._reset()

    def _reset(self) -> None:
        self.scale = stats.Var()
        self.a = 0.0
        self.b = 0.0

    def _z(self, score: float) -> float:
        variance = self.scale.get()
        return (score - self.scale.mean.get()) / math.sqrt(variance) if variance > 0 else 0.0

    def predict_one(self, score: float) -> float:
        logit = self.a * self._z(score) + self.b
        return 1.0 / (1.0 + math.exp(-min(max(logit, -30.0), 30.0)))

    def parameters(self) -> tuple[float, float, float, float] | None:
        """``(mean, std, a, b)``: ``P = sigmoid(a * (score - mean) / std + b)``; ``None`` before the scale is known."""
        variance = self.scale.get()
        if not variance > 0:
            return None
        return self.scale.mean.get(), math.sqrt(variance), self.a, self.b

    def learn_one(self, score: float, y_true: bool) -> None:
        self.scale.update(score)
        z = self._z(score)
        error = self.predict_one(score) - float(y_true)
        self.a -= self.lr * error * z
        self.b -= self.lr * error



@dataclass
class _Shown:
    """An open impression waiting for its label window to close."""

    ts: float
    items: tuple[tuple[str, float], ...]
    responded: set[str] = field(default_factory=set)


def _rolling_mean(window: int) -> utils.Rolling:
    return utils.Rolling(stats.Mean, window_size=window)


class PrequentialEvaluator:
    """Test-then-train online metrics of the live recommender (see the module docstring).

    Parameters
    ----------
    scorer
        Ranks purchases; :class:`FeatureScorer` when omitted.
    window
        Size of the rolling windows (evaluated purchases, labelled examples, closed impressions).
    negatives
        Uniform catalogue negatives drawn per evaluated purchase for ROC AUC and log loss.
    rank_every
        Evaluate 1 basket in ``rank_every`` (chosen by a stable hash of shopper and timestamp, so a
        replay and every worker evaluate the same ones): scoring the catalogue costs about a
        millisecond per basket.
    label_window_s
        How long after an impression a response still counts (event time): the learner's label window,
        :attr:`streams.settings.JoinSettings.label_window_s`.
    grace_s
        How much further event time must move before an impression closes (skew between partitions).
    """

    def __init__(self, scorer: Scorer | None = None, *, k: int = K, window: int = 1000, negatives: int = 1,
                 rank_every: int = 1, label_window_s: float = DEFAULT_LABEL_WINDOW_S, grace_s: float = 600.0,
                 max_open_impressions: int = 10_000, helpful_window: int = 500, seed: int = 0) -> None:
        self.scorer = scorer if scorer is not None else FeatureScorer()
        self.k = k
        self.window = window
        self.negatives = negatives
        self.rank_every = max(1, rank_every)
        self.label_window_s = label_window_s
        self.grace_s = grace_s
        self.max_open_impressions = max_open_impressions
        self.helpful_window = helpful_window
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self._rng = random.Random(self.seed)
        self.hit = _rolling_mean(self.window)
        self.ndcg = _rolling_mean(self.window)
        self.rr = _rolling_mean(self.window)
        self.purchases_evaluated = 0
        self._auc: dict[str, metrics.RollingROCAUC] = {}
        self._log_loss: dict[str, utils.Rolling] = {}
        self._positives: dict[str, utils.Rolling] = {}
        #: accuracy, precision, recall and F1 of "chosen" at the calibrated 0.5 threshold, per source
        self._classes: dict[str, dict[str, utils.Rolling]] = {}
        self._reliability: dict[str, Reliability] = {}
        self._calibrators: dict[str, OnlinePlatt] = {}
        self._scored: tuple[tuple[str, float], np.ndarray] | None = None  # the current basket's scores
        self.ctr = _rolling_mean(self.window)
        self.impressions_total = 0
        self.responded_total = 0
        self.late_responses = 0
        self._open: OrderedDict[str, _Shown] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()  # recent rec_ids, to drop redelivered impressions
        self._early: OrderedDict[str, tuple[float, set[str]]] = OrderedDict()  # responses before impressions
        self._shown_clock = -math.inf  # event time of the impression stream
        self._response_clock = -math.inf  # event time of the interaction stream
        self.helpful: dict[str, utils.Rolling] = {}
        self.feedback_total: dict[str, int] = {}

    # ------------------------------------------------------------------ purchases: test, then train

    def learn_one(self, interaction: Interaction) -> RankOutcome | None:
        """Score ``interaction`` with the scorer as it is now, update the metrics, then let the scorer learn it.

        Returns the purchase's :class:`RankOutcome` when it was evaluated.
        """
        outcome = None
        if interaction.type == "purchase" and self.is_sampled(interaction.user_id, interaction.ts):
            outcome = self.update_ranking(self._basket_scores(interaction.user_id, interaction.ts),
                                          self.scorer.item_position(interaction.item_id))
        self.respond(interaction)
        self.scorer.learn_one(interaction)
        return outcome

    def _basket_scores(self, user_id: str, ts: float) -> np.ndarray:
        """The scores of the basket ``(user_id, ts)``, computed at its first line, before it learned any."""
        key = (user_id, ts)
        if self._scored is None or self._scored[0] != key:
            self._scored = (key, self.scorer.score_all(user_id, ts))
        return self._scored[1]

    def is_sampled(self, user_id: str, ts: float) -> bool:
        """Whether the basket ``(user_id, ts)`` is evaluated (stable across replays and workers)."""
        return self.rank_every == 1 or zlib.crc32(f"{user_id}@{ts!r}".encode()) % self.rank_every == 0

    def update_ranking(self, scores: np.ndarray, target: int) -> RankOutcome:
        """Rank the bought item (position ``target`` in ``scores``, -1: unknown) and update the metrics."""
        ranked = 0 <= target < len(scores)
        outcome = RankOutcome(rank=expected_rank(scores, target), n_items=len(scores),
                              score=float(scores[target]) if ranked else None, k=self.k)
        self.hit.update(float(outcome.hit))
        self.ndcg.update(outcome.ndcg)
        self.rr.update(outcome.reciprocal_rank)
        self.purchases_evaluated += 1
        if ranked and len(scores) > 1:
            examples = [(True, outcome.score)]
            for _ in range(self.negatives):
                negative = self._rng.randrange(len(scores) - 1)
                negative += negative >= target  # uniform over the catalogue without the bought item
                examples.append((False, float(scores[negative])))
            self.update_scored("purchases", examples)
        return outcome

    # ------------------------------------------------------------------ labelled examples

    def update_scored(self, source: str, examples: Sequence[tuple[bool, float]]) -> list[float]:
        """Calibrate the scores of one group of ``(label, score)`` examples, update the metrics, then learn them.

        The whole group (one purchase and its negatives, or one impression) is predicted with the
        same calibrator state before any of it is learned: learning the positive first would shift
        the calibration for its own negatives, an order effect that reads as signal (measured: AUC
        0.0 instead of 0.5 on scores that carried no information).
        """
        calibrator = self._calibrators.get(source)
        if calibrator is None:
            calibrator = self._calibrators[source] = OnlinePlatt()
        probabilities = [calibrator.predict_one(score) for _, score in examples]
        for (y_true, _), probability in zip(examples, probabilities, strict=True):
            self.update_label(source, y_true, probability)
        for y_true, score in examples:
            calibrator.learn_one(score, y_true)
        return probabilities

    def calibration(self, source: str) -> tuple[float, float, float, float] | None:
        """The Platt parameters ``source``'s scores are calibrated with (:meth:`OnlinePlatt.parameters`)."""
        calibrator = self._calibrators.get(source)
        return calibrator.parameters() if calibrator is not None else None

    def update_label(self, source: str, y_true: bool, y_prob: float) -> None:
        """Count one labelled example whose predicted probability of being chosen was ``y_prob``."""
        if source not in self._auc:
            self._auc[source] = metrics.RollingROCAUC(window_size=self.window)
            self._log_loss[source] = utils.Rolling(metrics.LogLoss, window_size=self.window)
            self._positives[source] = _rolling_mean(self.window)
            self._classes[source] = {name: utils.Rolling(metric, window_size=self.window)
                                     for name, metric in CLASS_METRICS.items()}
            self._reliability[source] = Reliability(self.window)
        y_prob = min(max(y_prob, 1e-6), 1 - 1e-6)
        self._auc[source].update(y_true, y_prob)
        self._log_loss[source].update(y_true, y_prob)
        self._positives[source].update(float(y_true))
        for metric in self._classes[source].values():
            metric.update(bool(y_true), y_prob >= 0.5)
        self._reliability[source].update(y_prob, bool(y_true))

    # ------------------------------------------------------------------ impressions and their responses

    def show(self, impression: Impression) -> bool:
        """Open an impression for the CTR join; False when this ``rec_id`` was already shown (a redelivery)."""
        if impression.rec_id in self._open or impression.rec_id in self._closed:
            return False
        shown = _Shown(impression.ts, tuple((i.item_id, i.score) for i in impression.items))
        early = self._early.pop(impression.rec_id, None)
        if early is not None and early[0] <= impression.ts + self.label_window_s:
            shown.responded |= early[1] & {item for item, _ in shown.items}
        self._open[impression.rec_id] = shown
        self.impressions_total += 1
        self.responded_total += bool(shown.responded)
        while len(self._open) > self.max_open_impressions:
            self._close(next(iter(self._open)))  # bounded state: the oldest closes early
        self._shown_clock = max(self._shown_clock, impression.ts)
        while self._early and next(iter(self._early.values()))[0] + self.grace_s < self._shown_clock:
            self._early.popitem(last=False)  # its impression would have come by now
        self.expire(self._response_clock)  # an impression already past its window closes at once
        return True

    def respond(self, interaction: Interaction) -> None:
        """Join a click / add-to-cart / purchase to the impression it answers (by ``rec_id``).

        Every interaction moves event time on, which is what closes impressions.
        """
        if interaction.rec_id is not None and interaction.type in RESPONSE_TYPES:
            self._join(interaction)
        self.expire(interaction.ts)

    def _join(self, interaction: Interaction) -> None:
        shown = self._open.get(interaction.rec_id)
        if shown is not None:
            if interaction.ts <= shown.ts + self.label_window_s and any(
                    item == interaction.item_id for item, _ in shown.items):
                self.responded_total += not shown.responded
                shown.responded.add(interaction.item_id)
        elif interaction.rec_id in self._closed:
            self.late_responses += 1
        else:
            _, items = self._early.setdefault(interaction.rec_id, (interaction.ts, set()))
            items.add(interaction.item_id)
            self._early.move_to_end(interaction.rec_id)
            while len(self._early) > self.max_open_impressions:
                self._early.popitem(last=False)

    def expire(self, now: float) -> int:
        """The responses' event time is ``now``: close every impression whose label window (and grace) has
        passed; return how many."""
        self._response_clock = max(self._response_clock, now)
        closed = 0
        while self._open:
            rec_id, shown = next(iter(self._open.items()))
            if shown.ts + self.label_window_s + self.grace_s >= self._response_clock:
                break
            self._close(rec_id)
            closed += 1
        return closed

    def _close(self, rec_id: str) -> None:
        shown = self._open.pop(rec_id)
        self._closed[rec_id] = None
        while len(self._closed) > self.max_open_impressions:
            self._closed.popitem(last=False)
        self.ctr.update(float(bool(shown.responded)))
        if shown.items:
            self.update_scored("impressions", [(item in shown.responded, score) for item, score in shown.items])

    # ------------------------------------------------------------------ explanation feedback

    def update_feedback(self, feedback: ExplanationFeedback) -> None:
        rate = self.helpful.get(feedback.style)
        if rate is None:
            rate = self.helpful[feedback.style] = _rolling_mean(self.helpful_window)
        rate.update(float(feedback.helpful))
        self.feedback_total[feedback.style] = self.feedback_total.get(feedback.style, 0) + 1

    # ------------------------------------------------------------------ reading

    def snapshot(self, ts: float) -> list[MetricSnapshot]:
        """Every metric that has data, as records for ``recloop.ops.metrics`` (``ts``: when it was read)."""
        out: list[MetricSnapshot] = []

        def add(name: str, value: float, window: int, **labels: str) -> None:
            if math.isfinite(value):
                out.append(MetricSnapshot(name=name, value=float(value), window=window, ts=ts, labels=labels))

        evaluated = len(self.hit.window)
        if evaluated:
            add(f"{BASELINE}.hr_at_{self.k}", self.hit.get(), evaluated)
            add(f"{BASELINE}.ndcg_at_{self.k}", self.ndcg.get(), evaluated)
            add(f"{BASELINE}.mrr", self.rr.get(), evaluated)
        add(f"{BASELINE}.purchases_evaluated", self.purchases_evaluated, 0)
        baseline_name = getattr(self.scorer, "name", type(self.scorer).__name__)
        for source, auc in self._auc.items():
            n = len(self._positives[source].window)
            share = self._positives[source].get()
            scorer = baseline_name if source == "purchases" else SERVED
            if 0 < share < 1:  # AUC needs both classes in the window
                add("roc_auc", auc.get(), n, source=source, scorer=scorer)
            add("log_loss", self._log_loss[source].get(), n, source=source, scorer=scorer)
            for name, metric in self._classes[source].items():
                add(name, metric.get(), n, source=source, scorer=scorer)
            reliability = self._reliability[source]
            add("calibration_ece", reliability.ece(), len(reliability), source=source, scorer=scorer)
            for row in reliability.diagram():
                where = {"source": source, "scorer": scorer, "bin": f"{row.centre:.2f}"}
                add("calibration_predicted", row.predicted, row.n, **where)
                add("calibration_observed", row.observed, row.n, **where)
        if len(self.ctr.window):
            add("ctr", self.ctr.get(), len(self.ctr.window))
        add("impressions", self.impressions_total, 0)
        add("impressions_responded", self.responded_total, 0)
        add("impressions_late_responses", self.late_responses, 0)
        for style, rate in sorted(self.helpful.items()):
            add("explanation_helpful_rate", rate.get(), len(rate.window), style=style)
        return out


# --------------------------------------------------------------------------- everything the worker watches


@dataclass
class _OpenBasket:
    """Input-mix and quality signals of one basket (one shopper, one timestamp), summed over its lines."""

    new_user: bool
    lines: int = 0
    new_items: int = 0
    log_price: float = 0.0
    priced: int = 0
    surprise: float = 0.0
    categorised: int = 0
    item_surprise: float = 0.0
    misses: int = 0
    evaluated: int = 0

    def signals(self) -> dict[str, float | None]:
        def mean(total: float, n: int) -> float | None:
            return total / n if n else None

        return {"new_user": float(self.new_user), "new_item": self.new_items / self.lines,
                "price": mean(self.log_price, self.priced), "category": mean(self.surprise, self.categorised),
                "item": self.item_surprise / self.lines,
                "miss@10": mean(self.misses, self.evaluated)}


def normalised_query(query: str) -> str:
    """A search query as the query mix counts it: lower case, single spaces.

    >>> normalised_query("  Lunch   BAG ")
    'lunch bag'
    """
    return " ".join(query.lower().split())


class OnlineMonitor:
    """Metrics, drift detectors and the explanation bandit, fed by the worker's accepted records.

    ``served`` joins impressions with the next baskets (the headline figures); ``evaluator`` holds the
    model-free baseline ranking, CTR, calibration and helpfulness.

    Each ``learn_*`` method is what one ingest handler calls; it returns the drift alarms the record
    raised, for the caller to publish. ``clock`` stamps alarms and snapshots with processing time, so
    they line up with adapter publications (whose ``created_at`` is wall-clock time) on one axis.

    Interaction signals go to the drift detectors once per *basket*, when event time moves past it:
    invoice lines of one basket arrive together and share a shopper, so line-level values are
    strongly autocorrelated, and detectors built for independent values alarm on every big invoice
    (measured on the Online Retail replay: 40 alarms in 40k lines from line-level price and new-item
    signals; see ``docs/operations.md``). A basket's value is the mean over its lines (new-user: whether
    the shopper was new at the basket).

    "New" means new to this monitor, whose memory starts empty with a new worker, so at first every
    shopper and item is new. The new-user, new-item and item-mix signals therefore start only after
    ``warmup_baskets`` baskets; otherwise every new worker would raise the same alarm. A restarted
    worker restores the whole monitor, its basket count included (:mod:`streams.monitor_state`).
    """

    def __init__(self, evaluator: PrequentialEvaluator | None = None, drift: DriftMonitor | None = None,
                 bandit: ExplanationBandit | None = None, *, served: ServedQuality | None = None,
                 clock: Callable[[], float] = time.time, max_open_baskets: int = 10_000,
                 warmup_baskets: int = 1000) -> None:
        self.evaluator = evaluator if evaluator is not None else PrequentialEvaluator()
        self.served = served if served is not None else ServedQuality()
        self.drift = drift if drift is not None else DriftMonitor()
        self.bandit = bandit if bandit is not None else ExplanationBandit(seed=0)
        self.clock = clock
        self.max_open_baskets = max_open_baskets
        self.warmup_baskets = warmup_baskets
        self._reset()

    def __getstate__(self) -> dict:
        """Everything but the clock, which is not state (a test's may be a lambda): unpickling sets
        ``time.time``, and :meth:`streams.monitor_state.MonitorCheckpoint.load` the worker's clock."""
        state = dict(self.__dict__)
        del state["clock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.clock = time.time

    def _reset(self) -> None:
        self.catalogue: dict[str, tuple[str | None, float | None]] = {}
        self.users: set[str] = set()
        self.items: set[str] = set()
        self.category_surprise = Surprise()
        self.item_surprise = Surprise()
        self.query_surprise = Surprise()
        self.alarms: dict[tuple[str, str], int] = {}
        self._baskets: OrderedDict[tuple[str, float], _OpenBasket] = OrderedDict()
        self._event_time = -math.inf
        self.baskets_closed = 0

    def learn_item(self, item: Item) -> None:
        self.catalogue[item.item_id] = (item.category, item.price)

    def learn_interaction(self, interaction: Interaction) -> list[DriftAlarm]:
        """Evaluate, then learn, one interaction; return the alarms of the baskets it closed."""
        alarms = self._close_baskets_before(interaction.ts)
        key = (interaction.user_id, interaction.ts)
        basket = self._baskets.get(key)
        if basket is None:
            basket = self._baskets[key] = _OpenBasket(new_user=interaction.user_id not in self.users)
        category, listed_price = self.catalogue.get(interaction.item_id, (None, None))
        price = interaction.price if interaction.price is not None else listed_price
        basket.lines += 1
        basket.new_items += interaction.item_id not in self.items
        basket.item_surprise += self.item_surprise.learn_one(interaction.item_id)
        if price is not None:
            basket.log_price += math.log1p(price)
            basket.priced += 1
        if category is not None:
            basket.surprise += self.category_surprise.learn_one(category)
            basket.categorised += 1
        self.users.add(interaction.user_id)
        self.items.add(interaction.item_id)
        self.served.learn_one(interaction)
        outcome = self.evaluator.learn_one(interaction)
        if outcome is not None:
            basket.misses += not outcome.hit
            basket.evaluated += 1
        return alarms

    def flush(self) -> list[DriftAlarm]:
        """Close every open basket (end of a replay, or a test) and return the alarms that raised."""
        self.served.flush()
        return self._close_baskets_before(math.inf)

    def _close_baskets_before(self, ts: float) -> list[DriftAlarm]:
        self._event_time = max(self._event_time, ts)
        alarms: list[DriftAlarm] = []
        while self._baskets:
            key, basket = next(iter(self._baskets.items()))
            if key[1] >= self._event_time and len(self._baskets) <= self.max_open_baskets:
                break
            del self._baskets[key]
            signals = basket.signals()
            if self.baskets_closed < self.warmup_baskets:
                signals["new_user"] = signals["new_item"] = signals["item"] = None
            self.baskets_closed += 1
            alarms += self._alarms(signals)
        return alarms

    def learn_impression(self, impression: Impression) -> list[DriftAlarm]:
        """Open an impression for the joins; a ``/recommend`` list feeds the ``score`` signal (the other routes'
        scores are on other scales), a search its ``query`` (the query mix)."""
        self.served.show(impression)
        if not self.evaluator.show(impression) or not impression.items:
            return []
        if impression.route == "search":
            return self._alarms({"query": self.query_surprise.learn_one(normalised_query(impression.query or ""))})
        if impression.route != "recommend":
            return []
        return self._alarms({"score": max(item.score for item in impression.items)})

    def learn_feedback(self, feedback: ExplanationFeedback) -> list[DriftAlarm]:
        self.evaluator.update_feedback(feedback)
        segment = segment_of(self.evaluator.scorer.baskets_before(feedback.user_id))
        self.bandit.learn_one(segment, feedback.style, feedback.helpful)
        return []

    def _alarms(self, signals: dict[str, float | None]) -> list[DriftAlarm]:
        alarms = self.drift.update(signals, ts=self.clock())
        for alarm in alarms:
            key = (alarm.signal, alarm.severity)
            self.alarms[key] = self.alarms.get(key, 0) + 1
        return alarms

    def snapshot(self, ts: float | None = None) -> list[MetricSnapshot]:
        """Served quality first, then the evaluator's metrics and the bandit's posterior helpful rate per
        segment and style."""
        ts = self.clock() if ts is None else ts
        out = self.served.snapshot(ts) + self.evaluator.snapshot(ts)
        for segment in self.bandit.segments:
            votes = self.bandit.votes(segment)
            for style, rate in self.bandit.rates(segment).items():
                out.append(MetricSnapshot(name="explanation_style_rate", value=rate, window=round(votes[style]),
                                          ts=ts, labels={"segment": segment, "style": style}))
        return out
