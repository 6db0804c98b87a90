"""Micro-batch training of the LoRA adapter and fusion head on the live stream.

Two guards against forgetting: every micro-batch is mixed with examples replayed from a bounded
reservoir of older traffic, and an L2 penalty pulls the trainable weights toward the last
*accepted* (published) adapter, so a burst of odd traffic bends the model rather than rewrites it.
The base encoder is frozen throughout; only LoRA matrices and the head have gradients.

:meth:`MicroBatchTrainer.train_step` is a plain synchronous function: the Faust worker runs it in
an executor thread, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from learner.model import Batch, Example, RankingModel

if TYPE_CHECKING:
    from learner.query_clicks import QueryExample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of online training; defaults suit CPU micro-batches of ~64 examples."""

    lora_lr: float = 5e-4
    head_lr: float = 5e-3
    loss: Literal["softmax", "bpr"] = "softmax"
    #: Strength of the pull toward the last accepted weights (sum of squared differences).
    anchor_l2: float = 1e-2
    #: Older examples kept for replay, and the share of a micro-batch they add.
    reservoir_size: int = 4096
    replay_fraction: float = 0.25
    #: Items re-encoded with gradients per step; the rest use cached vectors. Bounds step time and memory.
    max_encoded_items: int = 64
    grad_clip: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class StepResult:
    """What one micro-batch did, for logs and the ops metrics topic."""

    step: int
    loss: float
    anchor_penalty: float
    grad_norm: float
    n_examples: int
    n_replayed: int
    n_encoded: int
    seconds: float


class Reservoir:
    """A uniform sample of everything offered so far, of bounded size (Vitter's algorithm R).

    >>> r = Reservoir(capacity=3, seed=0)
    >>> for i in range(100):
    ...     r.offer(i)
    >>> len(r), r.seen
    (3, 100)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self._rng = random.Random(seed)
        self._items: list = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: object) -> None:
        self.seen += 1
        if len(self._items) < self.capacity:
            self._items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.capacity:
            self._items[slot] = item

    def sample(self, k: int) -> list:
        """Up to ``k`` distinct stored items."""
        return self._rng.sample(self._items, min(k, len(self._items)))


def ranking_loss(scores: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Weighted mean over examples of sampled-softmax or BPR loss; the positive is column 0."""
    if kind == "softmax":
        logits = scores.masked_fill(~batch.mask, float("-inf"))
        per_example = -torch.log_softmax(logits, dim=1)[:, 0]
    elif kind == "bpr":
        negatives = batch.mask[:, 1:].float()
        pairwise = -nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]) * negatives
        per_example = pairwise.sum(1) / negatives.sum(1).clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (per_example * batch.weight).sum() / batch.weight.sum().clamp(min=1e-12)


class MicroBatchTrainer:
    """Trains one :class:`RankingModel` in place, step by step, deterministically for a given seed."""

    def __init__(self, model: RankingModel, config: TrainerConfig | None = None) -> None:
        self.model = model
        self.config = config or TrainerConfig()
        self.reservoir = Reservoir(self.config.reservoir_size, seed=self.config.seed)
        self.step = 0
        self._params = model.trainable_parameters()
        self._anchor = self.snapshot()
        self._anchor_text_version = model.text_version
        self._optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        lora = [p for name, p in self._params.items() if not name.startswith("head.")]
        head = [p for name, p in self._params.items() if name.startswith("head.")]
        return torch.optim.AdamW(
            [{"params": lora, "lr": self.config.lora_lr}, {"params": head, "lr": self.config.head_lr}],
            weight_decay=0.0,
        )

    # ------------------------------------------------------------------ weights

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of every trainable tensor."""
        return {name: p.detach().clone() for name, p in self._params.items()}

    @torch.no_grad()
    def restore(self, state: dict[str, torch.Tensor], text_version: int | None = None) -> None:
        """Put back weights from :meth:`snapshot`; optimizer moments are reset, they belonged to other weights.

        ``text_version``: the model's ``text_version`` when ``state`` was taken, if known, so item vectors
        encoded by those weights stay usable; otherwise the text tower counts as changed.
        """
        if state.keys() != self._params.keys():
            raise KeyError("snapshot does not match this model's trainable parameters")
        for name, p in self._params.items():
            p.copy_(state[name])
        self.model.text_changed(text_version)
        self._optimizer = self._new_optimizer()

    def accept(self) -> None:
        """The current weights were published: they become the anchor that later steps are pulled toward."""
        self._anchor = self.snapshot()
        self._anchor_text_version = self.model.text_version

    def rollback(self) -> None:
        """Return to the last accepted weights (after the gate refused the candidate)."""
        self.restore(self._anchor, self._anchor_text_version)

    def learning_state(self) -> dict:
        """Step count, replay reservoir, anchor and optimizer moments, for a checkpoint."""
        return {"step": self.step, "reservoir": self.reservoir, "anchor": self._anchor,
                "anchor_text_version": self._anchor_text_version, "optimizer": self._optimizer.state_dict()}

    def load_learning_state(self, state: dict) -> None:
        """Put back :meth:`learning_state`; the model's weights are restored separately (they are the model's)."""
        self.step, self.reservoir = state["step"], state["reservoir"]
        self._anchor, self._anchor_text_version = state["anchor"], state["anchor_text_version"]
        self._optimizer = self._new_optimizer()
        self._optimizer.load_state_dict(state["optimizer"])

    def anchor_penalty(self) -> torch.Tensor:
        return sum(((p - self._anchor[name]) ** 2).sum() for name, p in self._params.items())

    # ------------------------------------------------------------------ training

    def _fresh_items(self, examples: Sequence[Example | QueryExample], negatives: bool = True) -> list[int]:
        """Which candidates get encoded with gradients: positives first, then (``negatives``) the negatives, first
        seen first."""
        order = dict.fromkeys(e.positive for e in examples)
        if negatives:
            order.update(dict.fromkeys(i for e in examples for i in e.negatives))
        return list(order)[: self.config.max_encoded_items]

    def train_step(self, examples: Sequence[Example]) -> StepResult:
        """One optimizer step on ``examples`` plus replayed older ones; then remember ``examples``."""
        started = time.perf_counter()
        replayed = self.reservoir.sample(round(self.config.replay_fraction * len(examples)))
        mixed = [*examples, *replayed]
        fresh = self._fresh_items(mixed)
        batch = self.model.batch(mixed)

        self._optimizer.zero_grad(set_to_none=True)
        table = self.model.item_table(fresh)
        loss = ranking_loss(self.model(batch, table).float(), batch, self.config.loss)
        result = self._apply(loss, table, fresh, mixed, replayed, started)
        if not math.isnan(result.grad_norm):  # a skipped (poisoned) batch is not remembered either
            for example in examples:
                self.reservoir.offer(example)
        return result

    def pair_step(self, pairs: Sequence[tuple[int, int]], temperature: float = 0.05,
                  log_q: dict[int, float] | None = None) -> StepResult:
        """One optimizer step of the text tower alone on pairs of items one shopper bought — an item of their
        history and the item new to them they bought next: both encoded with gradients, each drawn toward its
        partner against every other pair's items (in-batch negatives, both directions, as CLIP trains its two
        towers). Items bought by the same shoppers come closer in text space, so an item no one has bought yet
        lands near the items its text resembles *as shoppers buy them*; moving both sides, unlike pulling items
        toward fixed shopper vectors, keeps the space from collapsing toward its centre. ``log_q``: each item's
        log-share among the items pairs are drawn from; subtracted from its logits as a negative, so an item is not
        pushed away from everything merely for being chosen often (the sampling-bias correction of in-batch
        softmax; without it the tower learnt to rank popular items lower). The pull toward the anchor applies as in
        :meth:`train_step`; the head has no part in it."""
        started = time.perf_counter()
        fresh = list(dict.fromkeys(i for pair in pairs for i in pair))
        self._optimizer.zero_grad(set_to_none=True)
        table = self.model.item_table(fresh)
        left = torch.tensor([a for a, _ in pairs], dtype=torch.long, device=self.model.device)
        right = torch.tensor([b for _, b in pairs], dtype=torch.long, device=self.model.device)
        logits = (table[left].float() @ table[right].float().T) / temperature
        same = (left.unsqueeze(1) == left.unsqueeze(0)) | (right.unsqueeze(1) == right.unsqueeze(0))
        off = same & ~torch.eye(len(pairs), dtype=torch.bool, device=logits.device)
        target = torch.arange(len(pairs), device=logits.device)
        if log_q is None:
            forward = backward = logits
        else:  # sampling-bias correction: an item is a negative as often as it is chosen
            q_right = torch.tensor([log_q.get(b, 0.0) for _, b in pairs], device=logits.device)
            q_left = torch.tensor([log_q.get(a, 0.0) for a, _ in pairs], device=logits.device)
            forward, backward = logits - q_right.unsqueeze(0), logits - q_left.unsqueeze(1)
        loss = (nn.functional.cross_entropy(forward.masked_fill(off, float("-inf")), target)
                + nn.functional.cross_entropy(backward.masked_fill(off, float("-inf")).T, target)) / 2
        return self._apply(loss, table, fresh, list(pairs), [], started)

    def query_step(self, examples: Sequence[QueryExample], temperature: float = 0.05,
                   shown_negatives: bool = False) -> StepResult:
        """One optimizer step of the text tower on search choices (:mod:`learner.query_clicks`): each query,
        encoded by the tower, against the chosen result and the results chosen for the batch's *other* queries
        (in-batch negatives: they keep the query close to what it means against the rest of the catalogue), and
        with ``shown_negatives`` the results passed over too (items matching the same word: alone they push the
        query away from everything the word matches, measured in :mod:`learner.ranker_config`) — a softmax over
        their cosines at ``temperature``. The head has no part in it; the pull toward the anchor applies as in
        :meth:`train_step`. Not replayed: the examples are already a sample of every search seen."""
        started = time.perf_counter()
        fresh = self._fresh_items(examples, negatives=shown_negatives)
        rows = []
        for example in examples:
            others = (e.positive for e in examples if e.query != example.query and e.positive != example.positive)
            rows.append((example.positive, *dict.fromkeys((*(example.negatives if shown_negatives else ()),
                                                            *others))))
        width = max(len(items) for items in rows)
        candidates = torch.zeros(len(examples), width, dtype=torch.long, device=self.model.device)
        mask = torch.zeros(len(examples), width, dtype=torch.bool, device=self.model.device)
        for row, items in enumerate(rows):
            candidates[row, : len(items)] = torch.tensor(items, dtype=torch.long)
            mask[row, : len(items)] = True
        weight = torch.tensor([e.weight for e in examples], dtype=torch.float32, device=self.model.device)

        self._optimizer.zero_grad(set_to_none=True)
        queries = nn.functional.normalize(self.model.encode_texts([e.query for e in examples]).float(), dim=-1)
        table = self.model.item_table(fresh)
        cosine = (table[candidates].float() * queries.unsqueeze(1)).sum(-1)
        logits = (cosine / temperature).masked_fill(~mask, float("-inf"))
        per_example = -torch.log_softmax(logits, dim=1)[:, 0]
        loss = (per_example * weight).sum() / weight.sum().clamp(min=1e-12)
        return self._apply(loss, table, fresh, list(examples), [], started)

    def _apply(self, loss: torch.Tensor, table: torch.Tensor, fresh: list[int], mixed: list, replayed: list,
               started: float) -> StepResult:
        """The optimizer step shared by both objectives: the pull toward the anchor, clipping, and the cached
        vectors of the items encoded with gradients brought up to date (one step behind)."""
        penalty = self.anchor_penalty()
        total = loss + self.config.anchor_l2 * penalty
        if not torch.isfinite(total):  # one poisoned batch must not wreck the adapter
            log.warning("train step %d skipped: loss is %s", self.step + 1, float(total.detach()))
            return self._result(loss, penalty, math.nan, mixed, replayed, [], started)
        total.backward()
        grad_norm = nn.utils.clip_grad_norm_([p for p in self._params.values() if p.grad is not None],
                                             self.config.grad_clip)
        self._optimizer.step()
        self.model.text_changed()
        if fresh:
            with torch.no_grad():
                index = torch.tensor(fresh, dtype=torch.long, device=self.model.device)
                self.model.item_vectors[index] = table[index].detach()
        self.step += 1
        return self._result(loss, penalty, float(grad_norm), mixed, replayed, fresh, started)

    def _result(self, loss: torch.Tensor, penalty: torch.Tensor, grad_norm: float, mixed: list, replayed: list,
                fresh: list[int], started: float) -> StepResult:
        result = StepResult(
            step=self.step,
            loss=float(loss.detach()),
            anchor_penalty=float(penalty.detach()),
            grad_norm=grad_norm,
            n_examples=len(mixed),
            n_replayed=len(replayed),
            n_encoded=len(fresh),
            seconds=time.perf_counter() - started,
        )
        log.debug("train step %d: loss %.4f, %d examples (%d replayed), %.2fs", result.step, result.loss,
                  result.n_examples, result.n_replayed, result.seconds)
        return result
