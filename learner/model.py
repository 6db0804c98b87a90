"""The ranking model: a two-tower text encoder with LoRA, fused with the caller's behavioural features.

A shopper's own history ranks the next basket far better than product text alone (NDCG@10 0.265
for recency-weighted repeat vs 0.107 for frozen-encoder similarity on the UCI data). So text is one
input among several: the caller passes per-(user, candidate) feature columns (repeat, co-occurrence,
popularity, …) and a small :class:`FusionHead` combines them with the cosine between the user's
text vector and the item's. At version 0 the head scores exactly ``1.0·features[0] + 0.05·cosine``
and LoRA is the identity, so the model starts as the strongest baseline (repeat) with a text
tie-breaker, and the updates learn how to mix.

Serving is cheap on CPU because no encoder forward happens per request: item vectors are
encoded once per adapter version (:meth:`RankingModel.refresh_item_vectors`) and the user
vector is the recency-weighted mean of the cached vectors of the items they bought.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from torch import nn

from learner.encoder import Base, base_fingerprint, encode_texts
from learner.rich_features import FEATURE_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """What shapes the model's scores; an adapter is only loadable into a model with the same architecture."""

    #: Names of the caller's feature columns, in order. Column 0 is the strongest signal (repeat).
    feature_names: tuple[str, ...] = FEATURE_NAMES
    #: Initial weight of column 0, of every other column, and of the text cosine: version 0 ranks as the
    #: repeat baseline, the text cosine breaking its ties.
    primary_weight: float = 1.0
    secondary_weight: float = 0.0
    text_weight: float = 0.05
    #: Initial weight of the ``dismissed`` column (a shopper said the item is irrelevant to them): strongly
    #: negative, so one published head already keeps twice-dismissed items out of that shopper's top 10 (two
    #: verdicts: ``log1p(1.0) * -8 = -5.5``, more than the spread of a typical top 10); training moves it.
    dismissed_weight: float = -8.0
    #: Width of the residual MLP of the fusion head (0: linear head only).
    head_hidden: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("query", "value")
    #: Token budget per item text; product titles are short.
    max_length: int = 32
    #: A history item ``half_life`` purchases old counts half as much in the user vector.
    history_half_life: float = 8.0
    max_history: int = 50
    encode_batch_size: int = 128

    #: Fields an adapter and the model it is loaded into must agree on.
    ARCHITECTURE = ("feature_names", "head_hidden", "lora_r", "lora_alpha", "target_modules")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    def incompatibilities(self, other: ModelConfig) -> list[str]:
        """Architecture fields that differ, as readable ``name: mine != theirs`` strings."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in self.ARCHITECTURE
            if getattr(self, name) != getattr(other, name)
        ]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True, eq=False)
class Example:
    """One observed choice: a shopper with ``history`` picked ``positive`` over ``negatives``.

    ``features`` has one row per candidate, ``[positive, *negatives]``, one column per
    :attr:`ModelConfig.feature_names`; ``history`` holds item indices oldest → newest and must
    only contain what the shopper did before the choice.
    """

    history: tuple[int, ...]
    positive: int
    negatives: tuple[int, ...]
    features: np.ndarray
    weight: float = 1.0

    def __post_init__(self) -> None:
        features = np.asarray(self.features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != 1 + len(self.negatives):
            rows = 1 + len(self.negatives)
            raise ValueError(f"features must be [{rows} candidates, n_features], got {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features must be finite")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "history", tuple(int(i) for i in self.history))
        object.__setattr__(self, "negatives", tuple(int(i) for i in self.negatives))

    @property
    def candidates(self) -> tuple[int, ...]:
        return (int(self.positive), *self.negatives)


@dataclass(frozen=True)
class Batch:
    """Examples padded into tensors; padded candidates are masked, padded history has weight 0."""

    history: torch.Tensor  # [B, H] long
    history_weight: torch.Tensor  # [B, H] float
    candidates: torch.Tensor  # [B, C] long; column 0 is the positive
    mask: torch.Tensor  # [B, C] bool
    features: torch.Tensor  # [B, C, F] float
    weight: torch.Tensor  # [B] float

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def recency_weights(n: int, half_life: float) -> torch.Tensor:
    """Weights of ``n`` history items, oldest first: the newest counts 1, ``half_life`` items back 0.5.

    >>> recency_weights(3, 1.0)
    tensor([0.2500, 0.5000, 1.0000])
    """
    age = torch.arange(n - 1, -1, -1, dtype=torch.float32)
    return torch.pow(0.5, age / half_life)


def collate(examples: Sequence[Example], config: ModelConfig) -> Batch:
    """Pad a list of examples into one :class:`Batch` (on CPU)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    histories = [e.history[-config.max_history :] for e in examples]
    width_h = max(1, max(len(h) for h in histories))
    width_c = max(len(e.candidates) for e in examples)
    n = len(examples)
    history = torch.zeros(n, width_h, dtype=torch.long)
    history_weight = torch.zeros(n, width_h)
    candidates = torch.zeros(n, width_c, dtype=torch.long)
    mask = torch.zeros(n, width_c, dtype=torch.bool)
    features = torch.zeros(n, width_c, config.n_features)
    for row, (example, hist) in enumerate(zip(examples, histories, strict=True)):
        if example.features.shape[1] != config.n_features:
            given = example.features.shape[1]
            raise ValueError(f"example has {given} feature columns, model expects {config.n_features}")
        history[row, : len(hist)] = torch.tensor(hist, dtype=torch.long)
        history_weight[row, : len(hist)] = recency_weights(len(hist), config.history_half_life)
        cands = example.candidates
        candidates[row, : len(cands)] = torch.tensor(cands, dtype=torch.long)
        mask[row, : len(cands)] = True
        features[row, : len(cands)] = torch.from_numpy(example.features)
    weight = torch.tensor([float(e.weight) for e in examples])
    return Batch(history, history_weight, candidates, mask, features, weight)


#: Trailing feature columns that enter the score through one weight each, outside the linear layer and the MLP:
#: explanation feedback ("dismissed") can then only lower that shopper's score of that item, by an amount the
#: explanation names exactly, and a head trained on data without feedback is the head it was before the column.
LINEAR_ONLY = ("dismissed",)


class FusionHead(nn.Module):
    """score = w·features + exp(text_scale)·cosine + mlp([features, cosine]) + w_dismissed·dismissed.

    The MLP's output layer starts at zero and ``w``/``text_scale`` start at the configured
    weights, so the untrained head ranks like the primary feature with small tie-breakers.
    ``text_scale`` is a learned temperature for the cosine, kept positive. The :data:`LINEAR_ONLY`
    columns (when the config names them, last) each have their own weight, starting at
    :attr:`ModelConfig.dismissed_weight`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        names = config.feature_names
        self.n_mixed = len(names) - len(LINEAR_ONLY) if names[-len(LINEAR_ONLY):] == LINEAR_ONLY else len(names)
        n = self.n_mixed
        self.linear = nn.Linear(n, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(config.secondary_weight)
            self.linear.weight[0, 0] = config.primary_weight
        self.log_text_scale = nn.Parameter(torch.tensor(math.log(config.text_weight)))
        self.mlp: nn.Module | None = None
        if config.head_hidden > 0:
            out = nn.Linear(config.head_hidden, 1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.mlp = nn.Sequential(nn.Linear(n + 1, config.head_hidden), nn.Tanh(), out)
        self.dismissed_weight: nn.Parameter | None = None
        if n < len(names):
            self.dismissed_weight = nn.Parameter(torch.tensor(float(config.dismissed_weight)))

    def forward(self, features: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        """``features [..., F]`` and ``cosine [...]`` → scores ``[...]``."""
        score = self.linear_part(features, cosine)
        if self.mlp is not None:
            mixed = features[..., : self.n_mixed]
            score = score + self.mlp(torch.cat([mixed, cosine.unsqueeze(-1)], dim=-1)).squeeze(-1)
        return score

    def linear_part(self, features: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        """The score without the MLP: ``w·features + exp(text_scale)·cosine + w_dismissed·dismissed``."""
        score = self.linear(features[..., : self.n_mixed]).squeeze(-1) + self.log_text_scale.exp() * cosine
        if self.dismissed_weight is not None:
            score = score + self.dismissed_weight * features[..., self.n_mixed]
        return score


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class RankingModel(nn.Module):
    """Frozen base + LoRA item tower, a cached catalogue of item vectors, and the fusion head.

    The base module of ``base`` is copied, never wrapped in place, so several models (the
    live one, one being loaded, the trainer's) can come from one loaded base. The encoder
    stays in eval mode: no dropout, so cached and freshly encoded vectors agree.

    Thread-safety: :meth:`score` only reads; :meth:`refresh_item_vectors` and loading an
    adapter write, so prepare a new model off to the side and swap references.
    """

    def __init__(self, base: Base, config: ModelConfig | None = None, *, device: str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.tokenizer = base.tokenizer
        self.pooling = base.pooling
        self.base_fingerprint = base.fingerprint
        self.adapter_version: str | None = None
        lora = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            target_modules=sorted(self.config.target_modules),
            lora_dropout=0.0,
            bias="none",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = get_peft_model(copy.deepcopy(base.model), lora)
            self.head = FusionHead(self.config)
        self.item_texts: list[str] = []
        self.register_buffer("item_vectors", torch.zeros(0, base.dim), persistent=False)
        #: Which cached vectors the current text tower produced: ``text_version`` names the tower's weights
        #: (see :meth:`text_changed`); ``_exact`` maps an item to the text these weights encoded it from.
        #: Lets :meth:`ensure_item_vectors` skip items already encoded by these weights.
        self.text_version = 0
        self._next_text_version = 1
        self._exact: dict[int, str] = {}
        #: ``text_version`` -> (its ``_exact``, the vectors of those rows in that order), the last two versions
        self._kept: OrderedDict[int, tuple[dict[int, str], torch.Tensor]] = OrderedDict()
        self.to(pick_device(device))
        self.eval()

    # ------------------------------------------------------------------ state

    @property
    def device(self) -> torch.device:
        return self.item_vectors.device

    def train(self, mode: bool = True) -> RankingModel:
        super().train(mode)
        self.encoder.eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """LoRA matrices and head weights: everything an update may change."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors as PEFT saves them (``…query.lora_A.weight``)."""
        return get_peft_model_state_dict(self.encoder)

    def learning_state(self) -> dict:
        """Everything learned beyond the frozen base, for a checkpoint: trainable tensors, the catalogue's texts
        and cached vectors, and the text tower's version bookkeeping (see :mod:`learner.checkpoint`)."""
        return {"params": {name: p.detach().cpu().clone() for name, p in self.trainable_parameters().items()},
                "item_texts": list(self.item_texts), "item_vectors": self.item_vectors.detach().cpu().clone(),
                "text_version": self.text_version, "next_text_version": self._next_text_version,
                "exact": dict(self._exact), "adapter_version": self.adapter_version,
                "kept": [(version, dict(exact), vectors.cpu().clone())
                         for version, (exact, vectors) in self._kept.items()]}

    @torch.no_grad()
    def load_learning_state(self, state: dict) -> None:
        """Put back :meth:`learning_state` (a model of the same base and configuration)."""
        params = self.trainable_parameters()
        if state["params"].keys() != params.keys():
            raise ValueError("the checkpoint's trainable tensors do not match this model")
        for name, p in params.items():
            p.copy_(state["params"][name])
        self.item_texts = list(state["item_texts"])
        self.item_vectors = state["item_vectors"].to(self.device)
        self.text_version, self._next_text_version = state["text_version"], state["next_text_version"]
        self._exact = dict(state["exact"])
        self.adapter_version = state["adapter_version"]
        self._kept = OrderedDict((version, (exact, vectors.to(self.device)))
                                 for version, exact, vectors in state["kept"])

    def current_base_fingerprint(self) -> str:
        """Recomputed from the live tensors; equals :attr:`base_fingerprint` unless the base was modified."""
        return base_fingerprint(self.encoder)

    # ------------------------------------------------------------------ item tower

    @property
    def n_items(self) -> int:
        return len(self.item_texts)

    def encode_items(self, indices: Sequence[int]) -> torch.Tensor:
        """Encode catalogue items with the current adapter; gradients follow the caller's grad mode."""
        return self.encode_texts([self.item_texts[i] for i in indices])

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode free texts (a search query) with the current adapter, as items are; gradients follow the
        caller's grad mode."""
        return encode_texts(self.encoder, self.tokenizer, texts, max_length=self.config.max_length,
                            pooling=self.pooling, device=self.device)

    @torch.no_grad()
    def refresh_item_vectors(self, indices: Iterable[int] | None = None) -> None:
        """Re-encode the whole catalogue (or ``indices``) into the cache, in batches of similar length
        so little compute goes to padding."""
        order = range(self.n_items) if indices is None else set(int(i) for i in indices)
        order = sorted(order, key=lambda i: (len(self.item_texts[i]), i))
        step = self.config.encode_batch_size
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            self.item_vectors[torch.tensor(chunk, device=self.device)] = self.encode_items(chunk)
            self._exact.update((i, self.item_texts[i]) for i in chunk)

    def text_changed(self, version: int | None = None) -> int:
        """Record that the text tower's weights changed: to new ones (``None``), or back to the weights
        that had ``version``. Returns the current version. Whoever changes LoRA weights calls this.

        The exactly-encoded rows of the last two versions are kept aside, so going back to one (the
        gate scores the accepted weights, then the candidate) costs a row copy, not a re-encode.
        """
        if self._exact:
            self._kept[self.text_version] = (self._exact, self.item_vectors[list(self._exact)].clone())
            while len(self._kept) > 2:
                self._kept.popitem(last=False)
        if version is None:
            version, self._next_text_version = self._next_text_version, self._next_text_version + 1
        self.text_version = version
        self._exact = {}
        exact, vectors = self._kept.pop(self.text_version, ({}, None))
        still = [k for k, (i, text) in enumerate(exact.items()) if i < self.n_items and self.item_texts[i] == text]
        if still:
            rows = list(exact)
            self.item_vectors[[rows[k] for k in still]] = vectors[still]
            self._exact = {rows[k]: exact[rows[k]] for k in still}
        return self.text_version

    @torch.no_grad()
    def ensure_item_vectors(self, indices: Iterable[int]) -> int:
        """Encode the items of ``indices`` whose cached vector the current text tower did not produce (or
        produced from an older text); returns how many were encoded. Between text-tower changes this is free."""
        missing = {i for i in map(int, indices) if self._exact.get(i) != self.item_texts[i]}
        if missing:
            self.refresh_item_vectors(missing)
        return len(missing)

    def set_catalogue(self, texts: Sequence[str], *, encode: bool = True) -> None:
        """Replace the catalogue: item index ``i`` has text ``texts[i]``."""
        self.item_texts = [str(t) for t in texts]
        self.item_vectors = torch.zeros(len(self.item_texts), self.item_vectors.shape[1], device=self.device)
        self._exact, self._kept = {}, OrderedDict()
        if encode:
            self.refresh_item_vectors()

    def add_items(self, texts: Sequence[str]) -> range:
        """Append new items (indices continue the catalogue) and encode only those."""
        new = range(self.n_items, self.n_items + len(texts))
        self.item_texts.extend(str(t) for t in texts)
        grown = torch.zeros(len(new), self.item_vectors.shape[1], device=self.device)
        self.item_vectors = torch.cat([self.item_vectors, grown])
        self.refresh_item_vectors(new)
        return new

    # ------------------------------------------------------------------ scoring

    def batch(self, examples: Sequence[Example]) -> Batch:
        """Collate ``examples`` onto this model's device, refusing items outside the catalogue."""
        batch = collate(examples, self.config)
        largest = max(int(batch.history.max()), int(batch.candidates.max()))
        if largest >= self.n_items:
            raise IndexError(f"item index {largest} is outside the catalogue of {self.n_items} items")
        return batch.to(self.device)

    def item_table(self, fresh: Sequence[int] = ()) -> torch.Tensor:
        """The cached item vectors with the items in ``fresh`` re-encoded by the current adapter
        (with gradients when enabled); the cache itself is not changed."""
        if not fresh:
            return self.item_vectors
        index = torch.tensor(list(fresh), dtype=torch.long, device=self.device)
        return self.item_vectors.index_copy(0, index, self.encode_items(fresh).to(self.item_vectors.dtype))

    def forward(self, batch: Batch, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, C]`` of a batch, reading item vectors from ``table`` (default: the cache)."""
        table = self.item_vectors if table is None else table
        users = nn.functional.normalize((table[batch.history] * batch.history_weight.unsqueeze(-1)).sum(1), dim=-1)
        cosine = (table[batch.candidates] * users.unsqueeze(1)).sum(-1)
        return self.head(batch.features, cosine)

    @torch.no_grad()
    def user_vector(self, history: Sequence[int]) -> torch.Tensor:
        """The shopper's text vector: recency-weighted mean of their history's cached item vectors."""
        recent = list(history)[-self.config.max_history :]
        if not recent:
            return torch.zeros(self.item_vectors.shape[1], device=self.device)
        weights = recency_weights(len(recent), self.config.history_half_life).to(self.device)
        vectors = self.item_vectors[torch.tensor(recent, dtype=torch.long, device=self.device)]
        return nn.functional.normalize((vectors * weights.unsqueeze(-1)).sum(0), dim=-1)

    @torch.no_grad()
    def score(
        self,
        history: Sequence[int],
        candidates: Sequence[int] | torch.Tensor,
        features: np.ndarray | torch.Tensor,
    ) -> torch.Tensor:
        """Scores of ``candidates`` for one shopper; ``features`` is ``[n_candidates, n_features]``.

        No encoder forward: a dot product against cached item vectors plus the head.
        """
        index = torch.as_tensor(candidates, dtype=torch.long, device=self.device)
        feats = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        if feats.shape != (index.shape[0], self.config.n_features):
            raise ValueError(f"features must be [{index.shape[0]}, {self.config.n_features}], got {tuple(feats.shape)}")
        cosine = self.item_vectors[index] @ self.user_vector(history)
        return self.head(feats, cosine)
