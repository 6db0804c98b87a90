"""recloop's own streaming model as a :class:`~learner.baselines.Recommender`, for ``recloop eval``.

The offline protocol (:mod:`ops.evaluate`) scores a timestamp group, then lets every model learn it.
:class:`RecloopRecommender` learns the way the live worker does — online, in that order, from the
stream alone — with the pieces the worker uses: behavioural features, the frozen-base + LoRA
:class:`~learner.model.RankingModel`, the :class:`~learner.trainer.MicroBatchTrainer` (replay
reservoir, L2 anchor to the last accepted weights) and the :class:`~learner.gate.PublishGate`.

How it learns, per timestamp group (test, then train):

1. **Collect.** For each basket of a known shopper, the :class:`~learner.rich_features.RichFeatures`
   rows of the *whole catalogue seen so far* are computed from the state before the group (the same
   rows the model scored it with), with the text cosine to the shopper's history and the current top
   of the ranking. The basket joins a held-out window.
2. **Decide.** Once ``window_baskets`` baskets are held out, the candidate (the weights trained so far)
   and the last accepted version both rank the window over the whole catalogue; the gate publishes the
   candidate (a new *version*) unless its NDCG@10 is worse than the accepted one's by more than the
   tolerance, else training rolls back to the accepted weights.
3. **Train the head** on the window: a listwise loss over the whole catalogue (each bought item against
   every item not bought), a micro-batch of ``head_batch`` baskets (plus ``head_replay`` older ones from
   a reservoir) per step, pulled toward the accepted head by an L2 anchor. Sampled negatives bias the
   head: items near the top of the ranking (the shopper's past items) are drawn as negatives far more
   often than they occur, so the head learned to distrust repeat purchases (a prototype on the
   validation window: NDCG@10 .217 with sampled negatives vs .313 with the whole catalogue, same
   features). The whole catalogue is ~4k rows of 16 numbers per basket, cheap for a small head.
4. **Train the text tower**, sparingly: every ``text_every_windows`` windows, a few trainer micro-batches
   of sampled examples (an item new to the shopper against hard negatives from the top of the ranking
   and popularity-aware random ones, never the shopper's own past items), with the trainer's replay
   and anchor; then the catalogue's item vectors are re-encoded once, as a serving worker does for each
   adapter version. The trainer's own head learning rate is 0: the head is trained by step 3 only.

The head starts as the repeat baseline (column 0 with weight 1, a small text tie-breaker), so the
model cannot start worse than repeat, and learns how to mix the other columns.

:class:`FullFineTuneRecommender` is the same model with the whole encoder unfrozen (no LoRA) — the
variant whose forgetting we compare. :class:`FrozenBaseRecommender` is the frozen pretrained encoder
alone: cosine of item vectors to the mean of the shopper's last 20 items.

**Retention** (:class:`RetentionProbe`): a fixed early slice of baskets (December 2010, known shoppers)
is held out of training; its feature rows and histories are frozen as of then. Every accepted version
ranks it; retention is the last version's NDCG@10 over the best version's.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import torch
from torch import nn

from learner.baskets import Basket
from learner.encoder import Base
from learner.examples import NegativeSampler
from learner.gate import PublishGate, WindowMetrics
from learner.model import Example, ModelConfig, RankingModel
from learner.rich_features import RICH_FEATURE_NAMES, RichFeatures
from learner.trainer import MicroBatchTrainer, Reservoir, TrainerConfig

log = logging.getLogger(__name__)

K = 10
PROBE_END = datetime(2011, 1, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class RecloopConfig:
    """Online-learning settings of the eval model (tuned on 2011-06-09..2011-09-09, before the test period)."""

    #: Baskets held out per publish decision; each accepted window is a new version.
    window_baskets: int = 200
    #: Baskets per head step, and the head's Adam learning rate and pull toward the accepted head.
    head_batch: int = 8
    head_lr: float = 3e-3
    #: Learning rate of the cosine's temperature: Adam moves a log-scale by ~lr per step, so at the head's
    #: rate it can grow e-fold in 100 steps and drown the behavioural columns in text noise.
    text_scale_lr: float = 1e-3
    head_anchor_l2: float = 1e-2
    head_hidden: int = 32
    #: Older baskets replayed into each head step (a reservoir), against forgetting what earlier traffic taught.
    head_replay: int = 2
    head_reservoir: int = 400
    #: Weight of the text cosine in the untrained head (column 0, repeat, has weight 1).
    text_weight: float = 0.05
    #: Text tower: every n-th window, ``text_steps`` trainer micro-batches of ``text_batch`` examples.
    text_every_windows: int = 5
    text_steps: int = 3
    text_batch: int = 64
    text_positives: int = 2  # bought items per basket turned into text examples
    hard_negatives: int = 5  # from the top of the current ranking
    sampled_negatives: int = 10  # popularity-aware, as the live example builder draws them
    lora_lr: float = 5e-4
    full_finetune_lr: float = 5e-5
    anchor_l2: float = 1e-2
    #: What the trainer's L2 anchor pulls the encoder toward: ``"accepted"``, the last accepted version (the
    #: live worker's rule), or ``"base"``, the pretrained encoder itself (L2-SP: drift cannot accumulate
    #: from version to version).
    text_anchor: Literal["accepted", "base"] = "accepted"
    #: Gate: candidate NDCG@10 on the window may trail the accepted version's by this much.
    gate_tolerance: float = 0.005
    #: Nothing is learned before the catalogue has this many items.
    min_items: int = 50
    #: Retention probe: baskets before ``probe_end``, one in ``probe_every`` (a hash), at most ``probe_size``.
    probe_end: float = PROBE_END
    probe_every: int = 1
    probe_size: int = 300
    seed: int = 0


# --------------------------------------------------------------------------- shared behavioural state


class FeatureStore:
    """One :class:`RichFeatures` shared by every model that learns the stream, with rows cached per state.

    Several models (recloop, the full fine-tune) see the same stream: computing the same feature rows
    for each would double the cost. Rows are cached by (shopper, state version), and what a group's
    shoppers looked like *before* the group (rows and histories) stays available after the first model
    let the store learn the group, so later models never see the group in their own training data.
    """

    #: history items kept per shopper snapshot (models read their own ``max_history`` newest of them)
    MAX_HISTORY = 50

    def __init__(self) -> None:
        self.features = RichFeatures()
        self.version = 0  # groups learned
        self._rows: dict[tuple[str, int, int], np.ndarray] = {}
        self._group_ts = -math.inf
        self._group = GroupState(0, {}, {})

    @property
    def n_items(self) -> int:
        return self.features.cooccurrence.n_items

    def rows(self, user_id: str, n_items: int) -> np.ndarray:
        """Feature rows of items ``0..n_items-1`` for the shopper, from the current state."""
        key = (user_id, self.version, n_items)
        found = self._rows.get(key)
        if found is None:
            found = self.features.matrix(user_id, np.arange(n_items))
            if len(self._rows) > 256:
                self._rows = {k: v for k, v in self._rows.items() if k[1] == self.version}
            self._rows[key] = found
        return found

    def history(self, user_id: str) -> tuple[int, ...]:
        """The shopper's recent distinct items, oldest first, from the current state."""
        return self.features.history(user_id, self.MAX_HISTORY)

    def before(self, group: Sequence[Basket]) -> GroupState:
        """The catalogue size, and each known shopper's rows and history, as of before ``group``."""
        ts = group[0].ts
        if ts == self._group_ts:
            return self._group
        if ts <= self.features.clock:
            raise RuntimeError("the store learned this group before its state was taken")
        n = self.n_items
        known = [b.user_id for b in group if self.features.knows(b.user_id)]
        self._group_ts = ts
        self._group = GroupState(n, {u: self.rows(u, n) for u in known}, {u: self.history(u) for u in known})
        return self._group

    def learn(self, group: Sequence[Basket]) -> None:
        """Learn ``group`` once, whichever model asks first."""
        if group and group[0].ts > self.features.clock:
            self.before(group)  # keep the state of before, for the models that learn after
            self.features.learn(group)
            self.version += 1

    @staticmethod
    def is_probe(basket: Basket, config: RecloopConfig) -> bool:
        """Whether ``basket`` belongs to the retention probe slice (a stable hash, the same for every model)."""
        if basket.ts >= config.probe_end:
            return False
        return zlib.crc32(f"{basket.user_id}|{basket.ts}".encode()) % config.probe_every == 0


@dataclass(frozen=True)
class GroupState:
    """What the models may know when a timestamp group arrives: nothing of the group itself."""

    n_items: int
    rows: dict[str, np.ndarray]
    history: dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------- listwise head training


def listwise_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over baskets of the mean over bought items of ``-log p(item)`` against every item not bought.

    ``scores``, ``positive`` and ``valid`` are ``[baskets, items]``; ``valid`` masks padding.

    >>> s = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(float(listwise_loss(s, torch.tensor([[True, False, False]]), torch.ones(1, 3, dtype=torch.bool))), 4)
    0.2395
    """
    negatives = valid & ~positive
    log_rest = torch.logsumexp(scores.masked_fill(~negatives, -math.inf), dim=1, keepdim=True)
    per_item = -(scores - torch.logaddexp(scores, log_rest))
    per_basket = (per_item * positive).sum(1) / positive.sum(1).clamp(min=1)
    return per_basket.mean()


def batch_ndcg(scores: torch.Tensor, positive: torch.Tensor, n_targets: torch.Tensor) -> torch.Tensor:
    """NDCG@10 per row of ``scores [B, N]`` (padding at ``-inf``), ``positive [B, N]`` marking bought items,
    the ideal over ``min(10, n_targets)``.

    >>> s = torch.tensor([[0.1, 0.9, 0.5, -math.inf]])
    >>> batch_ndcg(s, torch.tensor([[False, True, False, False]]), torch.tensor([1])).tolist()
    [1.0]
    >>> round(batch_ndcg(s, torch.tensor([[False, False, True, False]]), torch.tensor([2])).item(), 4)
    0.3869
    """
    k = min(K, scores.shape[1])
    top = torch.topk(scores, k, dim=1).indices
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    dcg = (positive.gather(1, top).float() * discounts).sum(1)
    ideal_discounts = 1.0 / torch.log2(torch.arange(2, K + 2, dtype=torch.float32))
    ideal = torch.cumsum(ideal_discounts, 0)[(n_targets.clamp(1, K) - 1).long()]
    return torch.where(n_targets > 0, dcg / ideal, torch.zeros_like(dcg))


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
            valid[i, :n] = True
            positive[i, torch.from_numpy(held.positives)] = True
        return cls(rows, cosine, valid, positive, torch.tensor([h.n_targets for h in baskets]))


@dataclass
class HeldOut:
    """A basket waiting in the window: what the model knew when it would have ranked it."""

    user_id: str
    history: tuple[int, ...]
    rows: np.ndarray  # [n_items, n_features] as of before the basket
    cosine: np.ndarray  # [n_items] text cosine under the cache of then
    positives: np.ndarray  # bought items inside the catalogue
    n_targets: int  # all distinct items of the basket (unrankable ones count as misses)
    top: np.ndarray  # best-ranked items then (hard negatives for the text tower)
    scores: np.ndarray | None = None  # [n_items] the candidate's scores (the head does not change in a window)


@dataclass
class RetentionProbe:
    """A fixed early slice, frozen as of its time, ranked by every accepted version."""

    baskets: list[HeldOut] = field(default_factory=list)
    closed: bool = False
    #: (version, NDCG@10 of the fused model, NDCG@10 of the text cosine alone) per scored version
    scores: list[tuple[int, float, float]] = field(default_factory=list)

    def retention(self, column: int = 1) -> float | None:
        """Last scored version over the best one (``column`` 1: fused model, 2: text only)."""
        if not self.scores:
            return None
        values = [row[column] for row in self.scores]
        best = max(values)
        return values[-1] / best if best > 0 else 1.0


# --------------------------------------------------------------------------- the recommenders


class RecloopRecommender:
    """recloop's ranking model trained online in the protocol's order (see the module docstring)."""

    full_finetune = False

    def __init__(self, base: Base, item_texts: Sequence[str], *, config: RecloopConfig | None = None,
                 store: FeatureStore | None = None, item_vectors: torch.Tensor | None = None,
                 name: str = "recloop") -> None:
        self.name = name
        self.config = config or RecloopConfig()
        self.store = store if store is not None else FeatureStore()
        model_config = ModelConfig(feature_names=RICH_FEATURE_NAMES, secondary_weight=0.0,
                                   text_weight=self.config.text_weight, head_hidden=self.config.head_hidden)
        self.model = RankingModel(base, model_config, seed=self.config.seed)
        if item_vectors is not None and len(item_vectors) == len(item_texts):
            self.model.set_catalogue(item_texts, encode=False)
            self.model.item_vectors = item_vectors.detach().clone().to(self.model.device)
        else:
            self.model.set_catalogue(item_texts)
        if self.full_finetune:
            for param_name, param in self.model.encoder.named_parameters():
                param.requires_grad_("lora_" not in param_name)
        encoder_lr = self.config.full_finetune_lr if self.full_finetune else self.config.lora_lr
        self.trainer = MicroBatchTrainer(self.model, TrainerConfig(
            lora_lr=encoder_lr, head_lr=0.0, anchor_l2=self.config.anchor_l2, seed=self.config.seed))
        self.gate = PublishGate(metric="ndcg@10", tolerance=self.config.gate_tolerance,
                                min_examples=min(50, self.config.window_baskets))
        self._head_params = dict(self.model.head.named_parameters())
        self._head_optimizer = self._new_head_optimizer()
        self._accepted = self.trainer.snapshot()
        self._encoder_moved = False  # text steps since the last accepted version
        self._sampler = NegativeSampler(self.config.sampled_negatives, popular_fraction=0.5, seed=self.config.seed)
        self._rng = np.random.default_rng(self.config.seed)
        self._replay = Reservoir(self.config.head_reservoir, seed=self.config.seed)
        self.window: list[HeldOut] = []
        self.probe = RetentionProbe()
        self._probe_stack: Stacked | None = None
        self.version = 0
        self.windows = 0
        self.refused = 0
        self.head_steps = 0
        self.text_steps = 0
        self.timings = {"collect": 0.0, "head": 0.0, "text": 0.0, "refresh": 0.0, "gate": 0.0, "probe": 0.0}

    # ------------------------------------------------------------------ Recommender protocol

    @torch.no_grad()
    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        n = int(candidates.max(initial=-1)) + 1
        rows = self.store.rows(user_id, n)
        cosine = self._cosine(self.store.history(user_id), n)
        return self._head_scores(rows, cosine)[candidates]

    def learn(self, baskets: list[Basket]) -> None:
        started = time.perf_counter()
        state = self.store.before(baskets)
        for basket in baskets if state.n_items >= self.config.min_items else ():
            if basket.user_id in state.rows:
                self._hold_out(basket, state.n_items, state.rows[basket.user_id], state.history[basket.user_id])
        self.store.learn(baskets)
        if not self.probe.closed and baskets[0].ts >= self.config.probe_end and self.probe.baskets:
            self.probe.closed = True
            self._score_probe()
        self.timings["collect"] += time.perf_counter() - started
        if len(self.window) >= self.config.window_baskets:
            self._close_window()

    # ------------------------------------------------------------------ scoring pieces

    def _cosine(self, history: Sequence[int], n: int) -> np.ndarray:
        return (self.model.item_vectors[:n] @ self.model.user_vector(history)).cpu().numpy()

    @torch.no_grad()
    def _head_scores(self, rows: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        return self.model.head(torch.from_numpy(rows), torch.from_numpy(cosine)).numpy()

    def _hold_out(self, basket: Basket, n: int, rows: np.ndarray, history: tuple[int, ...]) -> None:
        positives = np.array(sorted({i for i in basket.items if i < n}), dtype=np.int64)
        history = history[-self.model.config.max_history :]
        cosine = self._cosine(history, n)
        held = HeldOut(basket.user_id, history, rows, cosine, positives, len(basket.items), np.zeros(0, np.int64))
        if FeatureStore.is_probe(basket, self.config):
            if not self.probe.closed and len(self.probe.baskets) < self.config.probe_size:
                self.probe.baskets.append(held)
            return  # held out of training for good
        if len(positives) == 0:
            return
        scores = self._head_scores(rows, cosine)
        depth = min(n, self.config.hard_negatives + len(basket.items) + len(history))
        top = np.argpartition(-scores, depth - 1)[:depth]
        held.top = top[np.argsort(-scores[top], kind="stable")]
        held.scores = scores
        self.window.append(held)

    # ------------------------------------------------------------------ one window: decide, then train

    def _close_window(self) -> None:
        window, self.window = self.window, []
        self.windows += 1
        started = time.perf_counter()
        stacked = Stacked.of(window, self.model.config.n_features)
        # the head only changes when a window closes: the candidate's scores are the ones taken at hold-out time
        taken = torch.full(stacked.cosine.shape, -math.inf)
        for i, held in enumerate(window):
            taken[i, : len(held.scores)] = torch.from_numpy(held.scores)
        candidate = WindowMetrics(float(batch_ndcg(taken, stacked.positive, stacked.n_targets).mean()), math.nan,
                                  len(window))
        current = self.trainer.snapshot()
        self._load_head(self._accepted)
        serving = self._window_metrics(stacked)
        self._load_head(current)
        decision = self.gate.decide(candidate, serving)
        self.timings["gate"] += time.perf_counter() - started
        if decision.publish:
            if self.config.text_anchor == "accepted":
                self.trainer.accept()
            self._accepted = self.trainer.snapshot()
            self.version += 1
            self._encoder_moved = False
            if self.probe.closed:
                self._score_probe()
        else:
            self.refused += 1
            log.info("%s: window %d refused (%s)", self.name, self.windows, decision.reason)
            self.trainer.restore(self._accepted)
            self._head_optimizer = self._new_head_optimizer()
            if self._encoder_moved:
                self._refresh()
                self._encoder_moved = False
        self._train_head(window)
        if self.windows % self.config.text_every_windows == 0:
            self._train_text(window)

    @torch.no_grad()
    def _window_metrics(self, stacked: Stacked) -> WindowMetrics:
        """NDCG@10 of the head now loaded, over the whole catalogue of each held-out basket."""
        scores = self.model.head(stacked.rows, stacked.cosine).masked_fill(~stacked.valid, -math.inf)
        ndcg = batch_ndcg(scores, stacked.positive, stacked.n_targets)
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
            loss = listwise_loss(self.model.head(batch.rows, batch.cosine), batch.positive, batch.valid)
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

    def _text_examples(self, window: Sequence[HeldOut]) -> list[Example]:
        """Examples for the text tower: items new to the shopper, against other items new to them.

        Repeat purchases are the behavioural columns' job; the text tower's is to find *new* items like the
        ones a shopper bought. Items of their own history are never negatives: they sit close to the
        history vector by construction, and pushing them away would teach the tower to scatter what
        belongs together.
        """
        examples = []
        for held in window:
            n = len(held.rows)
            known = set(held.history)
            positives = np.array([i for i in held.positives.tolist() if i not in known], dtype=np.int64)
            if len(positives) > self.config.text_positives:
                positives = self._rng.choice(positives, self.config.text_positives, replace=False)
            if len(positives) == 0:
                continue
            bought = set(held.positives.tolist())
            popular = np.argsort(-held.rows[:, RICH_FEATURE_NAMES.index("pop_30d")], kind="stable")[:200]
            hard = [int(i) for i in held.top if int(i) not in bought and int(i) not in known]
            hard = hard[: self.config.hard_negatives]
            sampled = self._sampler.sample(n, popular, exclude=bought | known | set(hard))
            negatives = (*hard, *sampled)
            if not negatives:
                continue
            for positive in positives.tolist():
                candidates = np.array([positive, *negatives])
                examples.append(Example(history=held.history, positive=positive, negatives=negatives,
                                        features=held.rows[candidates]))
        return examples

    def _train_text(self, window: Sequence[HeldOut]) -> None:
        started = time.perf_counter()
        examples = self._text_examples(window)
        self._rng.shuffle(examples)
        for step in range(self.config.text_steps):
            batch = examples[step * self.config.text_batch : (step + 1) * self.config.text_batch]
            if not batch:
                break
            self.trainer.train_step(batch)
            self.text_steps += 1
            self._encoder_moved = True
        self.timings["text"] += time.perf_counter() - started
        if self._encoder_moved:
            self._refresh()

    def _refresh(self) -> None:
        """Re-encode the whole catalogue with the current encoder, as serving does for a new version."""
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
        self.probe.scores.append((self.version, float(batch_ndcg(fused, stacked.positive, stacked.n_targets).mean()),
                                  float(batch_ndcg(text, stacked.positive, stacked.n_targets).mean())))
        self.timings["probe"] += time.perf_counter() - started

    def report(self) -> dict:
        """What the run did: versions, refusals, steps, where the time went, and the retention curve."""
        return {
            "versions": self.version, "windows": self.windows, "refused": self.refused,
            "head_steps": self.head_steps, "text_steps": self.text_steps,
            "probe_baskets": len(self.probe.baskets),
            "retention": self.probe.retention(1), "retention_text": self.probe.retention(2),
            "probe": [{"version": v, "ndcg@10": round(f, 4), "text_ndcg@10": round(t, 4)}
                      for v, f, t in self.probe.scores],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "head_linear": dict(zip(("text", *RICH_FEATURE_NAMES), [
                round(float(self.model.head.log_text_scale.detach().exp()), 4),
                *[round(float(w), 4) for w in self.model.head.linear.weight.detach()[0]]], strict=True)),
        }


class FullFineTuneRecommender(RecloopRecommender):
    """The same model and schedule with the whole encoder trained (LoRA off) at a full fine-tuning rate.

    The variant whose forgetting :class:`RecloopRecommender` is compared with; it costs ~2-3x per text step.
    """

    full_finetune = True

    def __init__(self, base: Base, item_texts: Sequence[str], *, name: str = "full_finetune", **kwargs) -> None:
        super().__init__(base, item_texts, name=name, **kwargs)


class FrozenBaseRecommender:
    """The frozen pretrained encoder alone: cosine of each item to the mean of the shopper's last 20 items."""

    def __init__(self, base: Base | None = None, item_texts: Sequence[str] = (), *,
                 item_vectors: torch.Tensor | None = None, last_items: int = 20, name: str = "frozen_base") -> None:
        self.name = name
        self.last_items = last_items
        if item_vectors is None:
            if base is None:
                raise ValueError("give a base to encode the texts with, or the item vectors")
            model = RankingModel(base, ModelConfig())  # LoRA starts as the identity: these are base vectors
            model.set_catalogue(item_texts)
            item_vectors = model.item_vectors
        self.vectors = item_vectors.detach().cpu().numpy().astype(np.float32)
        self._recent: dict[str, dict[int, None]] = {}

    def learn(self, baskets: list[Basket]) -> None:
        for basket in baskets:
            recent = self._recent.setdefault(basket.user_id, {})
            for item in basket.items:
                recent.pop(item, None)
                recent[item] = None
            while len(recent) > self.last_items:
                del recent[next(iter(recent))]

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        recent = self._recent.get(user_id)
        if not recent:
            return np.zeros(len(candidates))
        user = self.vectors[list(recent)].mean(0)
        norm = float(np.linalg.norm(user))
        if norm == 0:
            return np.zeros(len(candidates))
        return (self.vectors[candidates] @ (user / norm)).astype(np.float64)
