"""The online ranker: how recloop's one ranking model learns from the stream, window by window.

The live learner (:class:`learner.service.LearnerService`) and ``recloop eval`` both run this class;
serving ranks with the weights it publishes. It learns in prequential order (test, then train):

1. **Hold out.** When a basket of a known shopper is complete (event time moved past it), *before* the
   features learn it, the feature rows of the whole catalogue are taken from the state of then, with
   the text cosine to the shopper's history and the current scores. The basket joins a window.
2. **Decide.** Once ``window_baskets`` are held out, the candidate (the weights trained so far, which
   never saw the window) and the last accepted version both rank the window over the whole catalogue
   — exactly what serving would have shown — and the :class:`~learner.gate.PublishGate` publishes the
   candidate unless its NDCG@10 trails the accepted one's by more than the tolerance; else the weights
   roll back to the accepted ones.
3. **Train the head** on the window: a listwise loss over the whole catalogue (each bought item against
   every item not bought), ``head_batch`` baskets plus ``head_replay`` older ones from a reservoir per
   step, pulled toward the accepted head. Sampled negatives bias a head against repeat purchases: the
   shopper's own items sit near the top of the ranking and were drawn as negatives far more often than
   they occur (NDCG@10 .217 with sampled negatives vs .313 over the whole catalogue, same features).
4. **Train the text tower**, sparingly: every ``text_every_windows`` windows, a few micro-batches of pairs of
   items one shopper bought — an item *new to them* and the item of their history nearest to it in text space
   (:meth:`OnlineRanker.text_pairs`), both encoded, each against the batch's other pairs' items
   (:meth:`~learner.trainer.MicroBatchTrainer.pair_step`) — pulled toward the pretrained base; then the
   catalogue's item vectors are re-encoded once, as every serving worker would otherwise have to.

The head starts as the repeat baseline (column 0 with weight 1, a small text tie-breaker), so the
model cannot start worse than repeat, and learns how to mix the other columns.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from learner.baskets import Basket
from learner.examples import NegativeSampler
from learner.gate import GateDecision, PublishGate, WindowMetrics
from learner.model import Example, RankingModel
from learner.query_clicks import QueryClicks
from learner.ranker_config import RankerConfig
from learner.ranking_metrics import ndcg_from_ranks
from learner.rich_features import FEATURE_NAMES, RichFeatures
from learner.trainer import MicroBatchTrainer, Reservoir, TrainerConfig

log = logging.getLogger(__name__)

K = 10


def listwise_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
                  log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over baskets of the mean over bought items of ``-log p(item)`` against every item not bought.

    ``scores``, ``positive`` and ``valid`` are ``[baskets, items]``; ``valid`` masks padding. ``log_weight``
    (same shape, default 0) weighs negatives: a negative of weight ``w`` counts as ``w`` copies of itself
    in the softmax's denominator, so pushing it down pays ``w`` times as much (:func:`negative_log_weights`).

    >>> s, v = torch.tensor([[2.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)
    >>> round(float(listwise_loss(s, torch.tensor([[True, False, False]]), v)), 4)
    0.2395
    >>> weights = torch.tensor([[0.0, math.log(3), 0.0]])
    >>> round(float(listwise_loss(s, torch.tensor([[True, False, False]]), v, weights)), 4)
    0.4327
    """
    negatives = valid & ~positive
    scores_of_rest = scores if log_weight is None else scores + log_weight
    log_rest = torch.logsumexp(scores_of_rest.masked_fill(~negatives, -math.inf), dim=1, keepdim=True)
    per_item = -(scores - torch.logaddexp(scores, log_rest))
    per_basket = (per_item * positive).sum(1) / positive.sum(1).clamp(min=1)
    return per_basket.mean()


#: Column of the feature rows that counts a shopper's "irrelevant" verdicts on an item (``log1p`` of the count).
DISMISSED_COLUMN = FEATURE_NAMES.index("dismissed")


def negative_log_weights(rows: torch.Tensor) -> torch.Tensor:
    """Log-weights of items as negatives of the listwise loss, from their feature rows ``[..., F]``.

    An item the shopper dismissed (explanation feedback "irrelevant", weighted count ``c``) is a negative of
    weight ``1 + c``: their explicit "no" on top of not buying it. Its ``dismissed`` column is ``log1p(c)``,
    which is exactly that log-weight. Every other item weighs 1.

    >>> rows = torch.zeros(1, 2, len(FEATURE_NAMES)); rows[0, 1, DISMISSED_COLUMN] = math.log1p(1.0)
    >>> negative_log_weights(rows).exp().tolist()
    [[1.0, 2.0]]
    """
    return rows[..., DISMISSED_COLUMN]


def target_ranks(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` 0-based expected ranks of each row's bought items (ties count half), ``inf``-padded.

    Excluded items are at ``-inf`` in ``scores`` and rank below everything else.

    >>> s = torch.tensor([[0.1, 0.9, 0.5, -math.inf], [1.0, 1.0, 0.0, 0.0]])
    >>> target_ranks(s, torch.tensor([[False, False, True, False], [True, False, False, False]])).tolist()
    [[1.0], [0.5]]
    """
    ascending = torch.sort(scores, dim=1).values
    width = int(positive.sum(1).max().clamp(min=1))
    ranks = torch.full((scores.shape[0], width), math.inf)
    for row in range(scores.shape[0]):
        values = scores[row, positive[row]]
        above = scores.shape[1] - torch.searchsorted(ascending[row], values, right=True)
        tied = torch.searchsorted(ascending[row], values, right=True) - torch.searchsorted(ascending[row], values)
        ranks[row, : len(values)] = above + 0.5 * (tied - 1)
    return ranks


def window_ndcg(scores: torch.Tensor, positive: torch.Tensor, n_targets: torch.Tensor) -> np.ndarray:
    """NDCG@10 per held-out basket over the whole catalogue: the metric of the gate, the probe and the eval
    (:func:`learner.ranking_metrics.ndcg_from_ranks`).

    >>> s = torch.tensor([[0.1, 0.9, 0.5, -math.inf]])
    >>> window_ndcg(s, torch.tensor([[False, True, False, False]]), torch.tensor([1])).tolist()
    [1.0]
    >>> round(float(window_ndcg(s, torch.tensor([[False, False, True, False]]), torch.tensor([2]))[0]), 4)
    0.3869
    """
    return ndcg_from_ranks(target_ranks(scores, positive).numpy(), n_targets.numpy(), K)


@dataclass
class HeldOut:
    """A basket waiting in the window: what the model knew when it would have ranked it."""

    user_id: str
    ts: float
    history: tuple[int, ...]
    rows: np.ndarray  # [n_items, n_features] as of before the basket
    allowed: np.ndarray  # [n_items] bool: items that could be recommended then (the catalogue)
    cosine: np.ndarray  # [n_items] text cosine under the item vectors of then
    positives: np.ndarray  # bought items inside the catalogue
    n_targets: int  # all distinct items of the basket (unrankable ones count as misses)
    top: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # best-ranked then (hard negatives)
    scores: np.ndarray | None = None  # the candidate's scores (the weights do not change within a window)


def new_to_shopper(held: HeldOut) -> np.ndarray:
    """The items of a held-out basket the shopper had not bought before."""
    known = set(held.history)
    return np.array([i for i in held.positives.tolist() if i not in known], dtype=np.int64)


@dataclass(frozen=True)
class Stacked:
    """Held-out baskets padded into tensors (catalogues of different sizes: padding is invalid)."""

    rows: torch.Tensor  # [B, N, F]
    cosine: torch.Tensor  # [B, N]
    valid: torch.Tensor  # [B, N] bool
    positive: torch.Tensor  # [B, N] bool
    n_targets: torch.Tensor  # [B]

    @classmethod
    def of(cls, baskets: Sequence[HeldOut], n_features: int) -> Stacked:
        width = max(len(h.rows) for h in baskets)
        rows = torch.zeros(len(baskets), width, n_features)
        cosine = torch.zeros(len(baskets), width)
        valid = torch.zeros(len(baskets), width, dtype=torch.bool)
        positive = torch.zeros(len(baskets), width, dtype=torch.bool)
        for i, held in enumerate(baskets):
            n = len(held.rows)
            rows[i, :n] = torch.from_numpy(held.rows)
            cosine[i, :n] = torch.from_numpy(held.cosine)
            valid[i, :n] = torch.from_numpy(held.allowed)
            positive[i, torch.from_numpy(held.positives)] = True
        return cls(rows, cosine, valid, positive, torch.tensor([h.n_targets for h in baskets]))


@dataclass
class RetentionProbe:
    """A fixed early slice (baskets before ``until``) held out of training for good, frozen as of its time,
    and ranked by every accepted version: what the model forgot shows as a falling NDCG@10 on it."""

    until: float
    size: int = 300
    baskets: list[HeldOut] = field(default_factory=list)
    closed: bool = False
    #: (version, NDCG@10 of the fused model, NDCG@10 of the text cosine alone) per scored version
    scores: list[tuple[int, float, float]] = field(default_factory=list)

    def takes(self, basket: Basket) -> bool:
        return basket.ts < self.until

    def retention(self, column: int = 1) -> float | None:
        """Last scored version over the best one (``column`` 1: fused model, 2: text only)."""
        if not self.scores:
            return None
        values = [row[column] for row in self.scores]
        best = max(values)
        return values[-1] / best if best > 0 else 1.0


@dataclass(frozen=True)
class WindowOutcome:
    """What closing one window did."""

    decision: GateDecision
    #: The newest basket time the weights now being trained have seen (the learner's watermark).
    trained_through_ts: float
    text_trained: bool


class OnlineRanker:
    """recloop's ranking model learning online (see the module docstring). Not thread-safe: one caller."""

    def __init__(self, model: RankingModel, features: RichFeatures, config: RankerConfig | None = None, *,
                 probe: RetentionProbe | None = None) -> None:
        self.model = model
        self.features = features
        self.config = config or RankerConfig()
        self.probe = probe
        if model.config.feature_names != FEATURE_NAMES:
            raise ValueError(f"the ranker computes {FEATURE_NAMES}, the model expects {model.config.feature_names}")
        if self.config.full_finetune:
            for name, param in model.encoder.named_parameters():
                param.requires_grad_("lora_" not in name)
        if not self.config.use_text:
            self._remove_text_term()
        encoder_lr = self.config.full_finetune_lr if self.config.full_finetune else self.config.lora_lr
        self.trainer = MicroBatchTrainer(model, TrainerConfig(lora_lr=encoder_lr, head_lr=0.0,
                                                               anchor_l2=self.config.anchor_l2, seed=self.config.seed))
        self.gate = PublishGate(metric="ndcg@10", tolerance=self.config.gate_tolerance,
                                min_examples=min(50, self.config.window_baskets))
        self._head_params = {name: p for name, p in model.head.named_parameters() if p.requires_grad}
        self._head_optimizer = self._new_head_optimizer()
        self._accepted = self.trainer.snapshot()
        self._accepted_text_version = model.text_version
        self._encoder_moved = False  # text steps since the last accepted version
        self._sampler = NegativeSampler(self.config.sampled_negatives, popular_fraction=0.5, seed=self.config.seed)
        self._rng = np.random.default_rng(self.config.seed)
        self._replay = Reservoir(self.config.head_reservoir, seed=self.config.seed)
        #: Search choices, joined by the caller (it sees the impressions): trained with the text tower.
        self.queries = QueryClicks(capacity=self.config.query_reservoir, seed=self.config.seed)
        self.query_steps = 0
        self._discovered: Counter[int] = Counter()
        self.window: list[HeldOut] = []
        self._probe_stack: Stacked | None = None
        self._pop_column = FEATURE_NAMES.index("pop_30d")
        self.versions = 0
        self.windows = 0
        self.refused = 0
        self.head_steps = 0
        self.text_steps = 0
        self.timings = {"hold_out": 0.0, "head": 0.0, "text": 0.0, "refresh": 0.0, "gate": 0.0, "probe": 0.0}

    #: What :meth:`learning_state` carries besides the trainer's state and the head optimizer's moments.
    _STATE = ("window", "probe", "versions", "windows", "refused", "head_steps", "text_steps", "timings",
              "_accepted", "_accepted_text_version", "_encoder_moved", "_sampler", "_rng", "_replay", "queries",
              "query_steps", "_discovered")
    #: Checkpoints written before the ranker learned from searches, or counted discoveries, lack these: they start
    #: empty.
    _SINCE_SEARCH = ("queries", "query_steps", "_discovered")

    def learning_state(self) -> dict:
        """The window being held out, the replay reservoir, the accepted weights, the random generators and the
        optimizers' moments: with the model's and the features' state, exactly where learning stands."""
        return {**{name: getattr(self, name) for name in self._STATE}, "trainer": self.trainer.learning_state(),
                "head_optimizer": self._head_optimizer.state_dict()}

    def load_learning_state(self, state: dict) -> None:
        """Put back :meth:`learning_state` (after the model's own state is loaded)."""
        for name in self._STATE:
            if name in state or name not in self._SINCE_SEARCH:
                setattr(self, name, state[name])
        self.trainer.load_learning_state(state["trainer"])
        self._head_optimizer = self._new_head_optimizer()
        self._head_optimizer.load_state_dict(state["head_optimizer"])
        self._probe_stack = None

    def _remove_text_term(self) -> None:
        """The ``recloop_no_text`` ablation: the head never reads the cosine — neither its linear term
        (scale ~1e-13, frozen) nor the MLP's input column (zero weights, zero gradient)."""
        head = self.model.head
        with torch.no_grad():
            head.log_text_scale.fill_(-30.0)
        head.log_text_scale.requires_grad_(False)
        if head.mlp is not None:
            first = head.mlp[0]
            with torch.no_grad():
                first.weight[:, -1] = 0.0
            mask = torch.ones_like(first.weight)
            mask[:, -1] = 0.0
            first.weight.register_hook(lambda grad: grad * mask)

    # ------------------------------------------------------------------ 1. hold out

    @property
    def window_full(self) -> bool:
        return len(self.window) >= self.config.window_baskets

    def hold_out(self, baskets: Sequence[Basket], allowed: np.ndarray) -> list[HeldOut]:
        """Take the baskets of one timestamp, *before* the features learn them, into the window.

        ``allowed[i]``: item ``i`` could be recommended now (it is in the catalogue). Returns what was held out.
        """
        started = time.perf_counter()
        n = min(self.model.n_items, len(allowed))
        allowed = np.asarray(allowed[:n], dtype=bool)
        held_out = []
        if int(allowed.sum()) >= self.config.min_items:
            for basket in baskets:
                if self.features.knows(basket.user_id):
                    held = self._held(basket, n, allowed)
                    if held is not None:
                        held_out.append(held)
        if self.probe is not None and not self.probe.closed and baskets and not self.probe.takes(baskets[0]):
            self.probe.closed = True
            if self.probe.baskets:
                self._score_probe()
        self.timings["hold_out"] += time.perf_counter() - started
        return held_out

    def _held(self, basket: Basket, n: int, allowed: np.ndarray) -> HeldOut | None:
        rows = self.features.matrix(basket.user_id, np.arange(n), now=basket.ts)
        history = tuple(i for i in self.features.history(basket.user_id) if i < n)[-self.model.config.max_history:]
        positives = np.array(sorted({i for i in basket.items if i < n and allowed[i]}), dtype=np.int64)
        held = HeldOut(basket.user_id, basket.ts, history, rows, allowed, self._cosine(history, n), positives,
                       len(basket.items))
        if self.probe is not None and self.probe.takes(basket):
            if not self.probe.closed and len(self.probe.baskets) < self.probe.size:
                self.probe.baskets.append(held)
            return None  # held out of training for good
        if len(positives) == 0:
            return None
        scores = np.where(allowed, self._head_scores(rows, held.cosine), -np.inf)
        depth = min(int(allowed.sum()), self.config.hard_negatives + len(basket.items) + len(history))
        top = np.argpartition(-scores, depth - 1)[:depth]
        held.top = top[np.argsort(-scores[top], kind="stable")]
        held.scores = scores
        self.window.append(held)
        return held

    def _cosine(self, history: Sequence[int], n: int) -> np.ndarray:
        return (self.model.item_vectors[:n] @ self.model.user_vector(history)).cpu().numpy()

    @torch.no_grad()
    def _head_scores(self, rows: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        return self.model.head(torch.from_numpy(rows), torch.from_numpy(cosine)).numpy()

    # ------------------------------------------------------------------ 2.-4. one window: decide, then train

    def close_window(self, on_publish: Callable[[GateDecision], None] | None = None, *,
                     hold: str | None = None) -> WindowOutcome:
        """Decide on the weights trained so far (``on_publish`` runs while they are loaded, e.g. to save them),
        then train on the window. ``hold``: why publishing is held (the gate refuses and the weights roll back)."""
        window, self.window = self.window, []
        self.windows += 1
        started = time.perf_counter()
        stacked = Stacked.of(window, self.model.config.n_features)
        taken = torch.full(stacked.cosine.shape, -math.inf)
        for i, held in enumerate(window):
            taken[i, : len(held.scores)] = torch.from_numpy(held.scores)
        candidate = WindowMetrics(float(window_ndcg(taken, stacked.positive, stacked.n_targets).mean()), math.nan,
                                  len(window))
        current = self.trainer.snapshot()
        self._load_head(self._accepted)
        serving = self._window_metrics(stacked)
        self._load_head(current)
        decision = self.gate.decide(candidate, serving, hold=hold)
        self.timings["gate"] += time.perf_counter() - started
        if decision.publish:
            if on_publish is not None:
                on_publish(decision)
            if self.config.text_anchor == "accepted":
                self.trainer.accept()
            self._accepted = self.trainer.snapshot()
            self._accepted_text_version = self.model.text_version
            self.versions += 1
            self._encoder_moved = False
            if self.probe is not None and self.probe.closed and self.probe.baskets:
                self._score_probe()
        else:
            self.refused += 1
            log.info("window %d refused (%s)", self.windows, decision.reason)
            self.rollback()
        self._train_head(window)
        for held in window:
            self._discovered.update(new_to_shopper(held).tolist())
        text_trained = (self.config.train_text and self.config.use_text
                        and self.windows % self.config.text_every_windows == 0)
        if text_trained:
            text_trained = self._train_text(window)
        return WindowOutcome(decision, max(h.ts for h in window), text_trained)

    def rollback(self) -> None:
        """Back to the last accepted weights (the gate refused, or a candidate is dropped)."""
        self.trainer.restore(self._accepted, self._accepted_text_version if not self._encoder_moved else None)
        self._head_optimizer = self._new_head_optimizer()
        if self._encoder_moved:
            self._refresh()
            self._encoder_moved = False

    def adopt_current(self) -> None:
        """The weights now loaded (an operator's rollback, or a resumed version) are the accepted ones."""
        self.trainer.restore(self.trainer.snapshot())
        self.trainer.accept()
        self._accepted = self.trainer.snapshot()
        self._accepted_text_version = self.model.text_version
        self._head_optimizer = self._new_head_optimizer()
        self._encoder_moved = False

    @torch.no_grad()
    def _window_metrics(self, stacked: Stacked) -> WindowMetrics:
        """NDCG@10 of the head now loaded, over the whole catalogue of each held-out basket."""
        scores = self.model.head(stacked.rows, stacked.cosine).masked_fill(~stacked.valid, -math.inf)
        ndcg = window_ndcg(scores, stacked.positive, stacked.n_targets)
        return WindowMetrics(ndcg_at_10=float(ndcg.mean()), auc=math.nan, n=len(ndcg))

    def _load_head(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self._head_params.items():
                param.copy_(state[f"head.{name}"])

    def _new_head_optimizer(self) -> torch.optim.Optimizer:
        scale = [p for name, p in self._head_params.items() if name == "log_text_scale"]
        rest = [p for name, p in self._head_params.items() if name != "log_text_scale"]
        return torch.optim.Adam([{"params": rest, "lr": self.config.head_lr},
                                 {"params": scale, "lr": self.config.text_scale_lr}])

    def _train_head(self, window: Sequence[HeldOut]) -> None:
        started = time.perf_counter()
        self.model.head.train()
        anchor = {name: self._accepted[f"head.{name}"] for name in self._head_params}
        for start in range(0, len(window), self.config.head_batch):
            chunk = [*window[start : start + self.config.head_batch], *self._replay.sample(self.config.head_replay)]
            batch = Stacked.of(chunk, self.model.config.n_features)
            loss = listwise_loss(self.model.head(batch.rows, batch.cosine), batch.positive, batch.valid,
                                 negative_log_weights(batch.rows))
            penalty = sum(((p - anchor[name]) ** 2).sum() for name, p in self._head_params.items())
            self._head_optimizer.zero_grad(set_to_none=True)
            (loss + self.config.head_anchor_l2 * penalty).backward()
            nn.utils.clip_grad_norm_(list(self._head_params.values()), 1.0)
            self._head_optimizer.step()
            self.head_steps += 1
        for held in window:
            held.scores = None  # only the gate needed them
            self._replay.offer(held)
        self.model.head.eval()
        self.timings["head"] += time.perf_counter() - started

    def text_examples(self, window: Sequence[HeldOut]) -> list[Example]:
        """Examples for the text tower: items new to the shopper, against other items new to them.

        Repeat purchases are the behavioural columns' job; the text tower's is to find *new* items like the
        ones a shopper bought. Items of their own history are never negatives: they sit close to the
        history vector by construction, and pushing them away would teach the tower to scatter what
        belongs together.
        """
        examples = []
        for held in window:
            known = set(held.history)
            positives = self._discoveries(held)
            if len(positives) == 0:
                continue
            bought = set(held.positives.tolist())
            excluded = bought | known | set(np.flatnonzero(~held.allowed).tolist())
            by_popularity = np.argsort(-held.rows[:, self._pop_column], kind="stable")
            popular = by_popularity[held.allowed[by_popularity]][:200]
            hard = [int(i) for i in held.top if int(i) not in excluded][: self.config.hard_negatives]
            sampled = self._sampler.sample(len(held.rows), popular, exclude=excluded | set(hard))
            negatives = (*hard, *sampled)
            if not negatives:
                continue
            for positive in positives.tolist():
                candidates = np.array([positive, *negatives])
                examples.append(Example(history=held.history, positive=positive, negatives=negatives,
                                        features=held.rows[candidates]))
        return examples

    def _discoveries(self, held: HeldOut) -> np.ndarray:
        """The basket's items new to the shopper, at most ``text_positives`` of them (drawn at random)."""
        positives = new_to_shopper(held)
        if len(positives) > self.config.text_positives:
            positives = self._rng.choice(positives, self.config.text_positives, replace=False)
        return positives

    def _log_q(self) -> dict[int, float]:
        """Log-share of each item among the items shoppers discovered so far (add-one smoothed): how often
        :meth:`text_pairs` draws it, hence how often it is another pair's negative."""
        total = sum(self._discovered.values()) + len(self._discovered)
        return {item: math.log((count + 1) / total) for item, count in self._discovered.items()}

    def text_pairs(self, window: Sequence[HeldOut]) -> list[tuple[int, int]]:
        """Pairs for :meth:`MicroBatchTrainer.pair_step`: each item new to the shopper that they bought (at most
        ``text_positives`` per basket) with the item of their history nearest to it in text space now — the one
        it most resembles of what they bought before."""
        pairs = []
        for held in window:
            positives = self._discoveries(held)
            if len(positives) == 0 or not held.history:
                continue
            history = torch.tensor(held.history, dtype=torch.long)
            with torch.no_grad():
                similarity = self.model.item_vectors[torch.from_numpy(positives)] @ self.model.item_vectors[history].T
            nearest = history[similarity.argmax(1)].tolist()
            pairs += list(zip(nearest, positives.tolist(), strict=True))
        return pairs

    def _train_text(self, window: Sequence[HeldOut]) -> bool:
        started = time.perf_counter()
        if self.config.text_objective == "pairs":
            examples = self.text_pairs(window)
        else:
            examples = self.text_examples(window)
        self._rng.shuffle(examples)
        log_q = self._log_q() if self.config.text_objective == "pairs" else None
        moved = False
        for step in range(self.config.text_steps):
            batch = examples[step * self.config.text_batch : (step + 1) * self.config.text_batch]
            if not batch:
                break
            if self.config.text_objective == "pairs":
                self.trainer.pair_step(batch, temperature=self.config.text_temperature, log_q=log_q)
            else:
                self.trainer.train_step(batch)
            self.text_steps += 1
            moved = self._encoder_moved = True
        for _ in range(self.config.query_steps):
            batch = self.queries.sample(self.config.query_batch)
            if not batch:
                break
            self.trainer.query_step(batch, temperature=self.config.query_temperature,
                                    shown_negatives=self.config.query_shown_negatives)
            self.query_steps += 1
            moved = self._encoder_moved = True
        self.timings["text"] += time.perf_counter() - started
        if moved:
            self._refresh()
        return moved

    def _refresh(self) -> None:
        """Re-encode the whole catalogue with the current encoder, as serving would for a new version."""
        started = time.perf_counter()
        self.model.refresh_item_vectors()
        self.timings["refresh"] += time.perf_counter() - started

    # ------------------------------------------------------------------ retention

    @torch.no_grad()
    def _score_probe(self) -> None:
        """Rank the probe with the weights now loaded (the accepted ones: called right after an accept)."""
        started = time.perf_counter()
        if self._probe_stack is None:
            self._probe_stack = Stacked.of(self.probe.baskets, self.model.config.n_features)
        stacked = self._probe_stack
        users = torch.stack([self.model.user_vector(held.history) for held in self.probe.baskets])
        cosine = users @ self.model.item_vectors[: stacked.rows.shape[1]].T
        fused = self.model.head(stacked.rows, cosine).masked_fill(~stacked.valid, -math.inf)
        text = cosine.masked_fill(~stacked.valid, -math.inf)
        self.probe.scores.append((self.versions, float(window_ndcg(fused, stacked.positive, stacked.n_targets).mean()),
                                  float(window_ndcg(text, stacked.positive, stacked.n_targets).mean())))
        self.timings["probe"] += time.perf_counter() - started

    def head_weights(self) -> dict[str, float]:
        """The head's weight of the text cosine and of each feature column outside the MLP."""
        head = self.model.head
        weights = [float(head.log_text_scale.detach().exp()), *head.linear.weight.detach()[0].tolist()]
        if head.dismissed_weight is not None:
            weights.append(float(head.dismissed_weight.detach()))
        return dict(zip(("text", *FEATURE_NAMES), (round(w, 4) for w in weights), strict=True))

    def report(self) -> dict:
        """What the run did: versions, refusals, steps, where the time went, the retention curve, the head."""
        probe = self.probe
        return {
            "versions": self.versions, "windows": self.windows, "refused": self.refused,
            "head_steps": self.head_steps, "text_steps": self.text_steps,
            "searches": self.queries.searches, "search_choices": self.queries.examples.seen,
            "query_steps": self.query_steps, "probe_baskets": len(probe.baskets) if probe else 0,
            "retention": probe.retention(1) if probe else None,
            "retention_text": probe.retention(2) if probe else None,
            "probe": [{"version": v, "ndcg@10": round(f, 4), "text_ndcg@10": round(t, 4)}
                      for v, f, t in (probe.scores if probe else [])],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "head_linear": self.head_weights(),
        }
