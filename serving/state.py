"""The swappable serving state: one model version, its head and the catalogue's item vectors.

A :class:`ServingState` is immutable once built. A new one (a new adapter, or the catalogue
grew) is built off to the side in a worker thread by :class:`StateBuilder`, then published by
:meth:`StateHolder.swap`, a single reference assignment. A request reads ``holder.current``
once and keeps that object to the end, so it never sees half of one version and half of
another, and a swap never waits for requests.

No encoder forward happens per request: the shopper's text vector is the recency-weighted
mean of the cached vectors of what they bought, exactly as :meth:`learner.model.RankingModel.score`
computes it, and the whole catalogue is scored with one matrix-vector product.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from learner.artifacts import Unpacked, load_adapter_into, shipped_item_vectors, vectors_for_texts
from learner.encoder import Base, encode_texts
from learner.model import FusionHead, ModelConfig, RankingModel, recency_weights
from learner.rich_features import FEATURE_NAMES
from serving.new_items import NEW_ITEM_SLATE, NewItemSlate, best_new, needed, reserve_last

log = logging.getLogger(__name__)

#: Version name of the base model with no adapter (LoRA identity, initial head).
BASE_VERSION = "v0"
#: The feature column that says the shopper bought the item before (the new-item stage leaves those out).
BOUGHT_BEFORE = FEATURE_NAMES.index("bought_before")


@dataclass(frozen=True, eq=False)
class CatalogueSnapshot:
    """The catalogue as the stream described it at one moment, aligned with the feature index.

    ``texts[i]`` is what item ``i`` is encoded from (its title, or its id until a title arrives);
    ``recommendable[i]`` is whether it is in the catalogue (items only seen in interactions are not).
    ``generation`` grows with every change, so a state knows whether it is current.
    """

    texts: tuple[str, ...]
    recommendable: np.ndarray
    generation: int

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class ServingState:
    """Everything one request needs from the model, frozen: version, head, item vectors, catalogue."""

    version: str
    config: ModelConfig
    head: FusionHead
    item_vectors: torch.Tensor  #: ``[n_items, dim]`` unit vectors, row ``i`` = feature index ``i``
    catalogue: CatalogueSnapshot
    source: VersionSource
    built_ms: float = 0.0
    created: float = field(default_factory=time.time)

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @functools.cached_property
    def mean_similarity(self) -> float:
        """The mean cosine between the item vectors (every pair, each item with itself included): the squared
        norm of their mean. Near 1 when the text tower cannot tell items apart (a random encoder)."""
        if self.n_items == 0:
            return 0.0
        return float((self.item_vectors.mean(0) ** 2).sum())

    def usable_history(self, history: Sequence[int]) -> list[int]:
        """The shopper's history items this state has vectors for, newest ``max_history`` kept."""
        n = self.n_items
        return [i for i in history if i < n][-self.config.max_history :]

    @torch.inference_mode()
    def user_vector(self, history: Sequence[int]) -> torch.Tensor:
        """Recency-weighted mean of the history's item vectors, normalised (zeros for no history)."""
        if not history:
            return torch.zeros(self.item_vectors.shape[1])
        weights = recency_weights(len(history), self.config.history_half_life)
        vectors = self.item_vectors[torch.as_tensor(history, dtype=torch.long)]
        return nn.functional.normalize((vectors * weights.unsqueeze(-1)).sum(0), dim=-1)

    @torch.inference_mode()
    def score_all(self, history: Sequence[int], features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and text cosines of every item of this state, given ``features [n_items, F]``.

        ``history`` must come from :meth:`usable_history`.
        """
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if feats.shape != (self.n_items, self.config.n_features):
            raise ValueError(f"features must be [{self.n_items}, {self.config.n_features}], got {tuple(feats.shape)}")
        cosine = self.item_vectors @ self.user_vector(history)
        return self.head(feats, cosine), cosine


    @torch.inference_mode()
    def user_cosine(self, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        """The text cosines of ``items`` to the shopper's vector (what :meth:`score_all` returns for them)."""
        index = torch.as_tensor(np.asarray(items, dtype=np.int64))
        return (self.item_vectors[index] @ self.user_vector(history)).numpy()

    @torch.inference_mode()
    def score_items(self, history: Sequence[int], items: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The scores :meth:`score_all` gives ``items``, from their feature rows ``features [len(items), F]`` only."""
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        cosine = torch.from_numpy(self.user_cosine(history, items))
        return self.head(feats, cosine).numpy().astype(np.float64)

    @torch.inference_mode()
    def top_k(self, history: Sequence[int], features: np.ndarray, recommendable: np.ndarray, k: int,
              slate: NewItemSlate | None = None, ages: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` items served to the shopper, their model scores and their text cosines: the ``k`` best
        recommendable items exactly as :meth:`score_all` ranks them, then the new-item stage
        (:mod:`serving.new_items`, ``slate``, default :data:`~serving.new_items.NEW_ITEM_SLATE`) — applied
        when the items' ``ages`` (days since first sale, :meth:`~learner.rich_features.RichFeatures.item_age_days`)
        are given, as serving gives them (:class:`~serving.history.RankingInputs`).

        The head's MLP only runs where it can change the top ``k``: its output is ``w2 · tanh(...) + b2`` and
        ``|tanh| <= 1``, so every item's score lies within ``|w2|_1`` of its linear-and-text part. Items whose
        upper bound is below the ``k``-th best lower bound cannot reach the top ``k`` and are not evaluated
        (at version 0, ``w2 = 0``: only ``k`` are).
        """
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        cosine = self.item_vectors @ self.user_vector(history)
        allowed = torch.from_numpy(np.ascontiguousarray(recommendable[: self.n_items]))
        k = min(k, int(allowed.sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        head = self.head
        bounded = isinstance(head.mlp, nn.Sequential) and len(head.mlp) == 3 and isinstance(head.mlp[1], nn.Tanh)
        if bounded:
            out = head.mlp[2]
            linear = head.linear_part(feats, cosine) + out.bias
            slack = out.weight.abs().sum()
            lower = torch.where(allowed, linear - slack, -torch.inf)
            threshold = torch.topk(lower, k).values[-1]
            candidates = torch.nonzero(allowed & (linear + slack >= threshold)).squeeze(-1)
        else:
            candidates = torch.nonzero(allowed).squeeze(-1)
        scores = head(feats[candidates], cosine[candidates])
        best = torch.topk(scores, k)
        top = candidates[best.indices]
        slate = NEW_ITEM_SLATE if slate is None else slate
        if ages is None or slate.slots == 0 or not slate.separates(self.mean_similarity):
            return top.numpy(), best.values.numpy(), cosine[top].numpy()
        served = self._with_new_items(top.numpy(), np.asarray(ages)[: self.n_items], allowed.numpy(), feats, cosine,
                                      history, slate)
        if served is None:
            return top.numpy(), best.values.numpy(), cosine[top].numpy()
        index = torch.from_numpy(served)
        return served, head(feats[index], cosine[index]).numpy(), cosine[index].numpy()

    def _with_new_items(self, top: np.ndarray, ages: np.ndarray, allowed: np.ndarray, feats: torch.Tensor,
                        cosine: torch.Tensor, history: Sequence[int], slate: NewItemSlate) -> np.ndarray | None:
        """``top`` with the slate's places given to the best new items that fit the shopper and are not in it:
        new (:meth:`~serving.new_items.NewItemSlate.is_new`), recommendable, never bought by the shopper, and at
        least ``slate.min_similarity`` similar to them. None when ``top`` already holds enough new items or none
        fits. A shopper without a usable history has no text to fit: their list is the model's."""
        want = needed(slate.is_new(ages[top]), slate.slots)
        if want == 0 or not history:
            return None
        fresh = slate.is_new(ages) & allowed[: len(ages)] & (feats[: len(ages), BOUGHT_BEFORE] == 0).numpy()
        fresh[top] = False
        pool = torch.from_numpy(np.flatnonzero(fresh))
        if not len(pool):
            return None
        if slate.similarity == "profile":
            similarity = cosine[pool]
        else:
            similarity = (self.item_vectors[pool] @ self.item_vectors[torch.as_tensor(list(history))].T).amax(1)
        fits = similarity >= slate.min_similarity
        pool, similarity = pool[fits], similarity[fits]
        if not len(pool):
            return None
        score = self.head(feats[pool], cosine[pool])
        picks = best_new(pool.numpy(), similarity.numpy(), score.numpy(), want, slate.by)
        return reserve_last(top, slate.is_new(ages[top]), picks)


@dataclass(frozen=True)
class Swap:
    """What one swap replaced, and how long the reference assignment took."""

    previous: ServingState | None
    current: ServingState
    apply_ms: float


class StateHolder:
    """The one mutable reference to the serving state. Readers take ``current`` once per request."""

    def __init__(self) -> None:
        self._state: ServingState | None = None
        self._swap_lock = threading.Lock()  # orders concurrent swaps; readers never take it

    @property
    def current(self) -> ServingState | None:
        return self._state

    def swap(self, state: ServingState) -> Swap:
        with self._swap_lock:
            start = time.perf_counter()
            previous, self._state = self._state, state
            apply_ms = (time.perf_counter() - start) * 1000
        return Swap(previous, state, apply_ms)


class VersionSource:
    """One model version's weights, and (built on first use) its item encoder for items not yet encoded.

    States of one version built as the catalogue grows share their source, so the encoder — a
    copy of the base with the LoRA weights — is built at most once per version, and never at all
    when the publisher shipped vectors for every item.
    """

    def __init__(self, base: Base, config: ModelConfig, content: Unpacked | None = None,
                 encoder: RankingModel | None = None, text_key: str | None = None) -> None:
        self.base = base
        self.config = config
        self.content = content
        self._encoder = encoder
        self._text_key = text_key
        self._encoder_source: VersionSource | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return BASE_VERSION if self.content is None else self.content.manifest.version

    @property
    def text_key(self) -> str:
        """A digest of everything that shapes this version's item vectors: LoRA weights, adapter and encoding
        settings. Two versions with the same key encode every text identically."""
        if self._text_key is None:
            self._text_key = text_digest(self.content)
        return self._text_key

    def sharing_encoder_with(self, other: VersionSource) -> VersionSource:
        """This version, encoding new items with ``other``'s encoder (same text key: same vectors), which is
        built only if a new item needs it, at most once for all the versions sharing it."""
        shared = VersionSource(self.base, self.config, self.content, encoder=other._encoder, text_key=self.text_key)
        if shared._encoder is None:
            shared._encoder_source = other._encoder_source or other  # one hop, however many versions share it
        return shared

    def encoder(self) -> RankingModel:
        with self._lock:
            if self._encoder is None and self._encoder_source is not None:
                self._encoder, self._encoder_source = self._encoder_source.encoder(), None
            if self._encoder is None:
                model = RankingModel(self.base, self.config)
                if self.content is not None:
                    load_adapter_into(model, self.content, refresh=False)
                self._encoder = model
            return self._encoder

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` vectors, batched by similar length as the trainer's cache refresh is."""
        if not texts:
            return torch.zeros(0, self.base.dim)
        model = self.encoder()
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        out = torch.zeros(len(texts), self.base.dim)
        step = self.config.encode_batch_size
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            out[torch.tensor(rows)] = encode_texts(
                model.encoder, model.tokenizer, [texts[i] for i in rows], max_length=self.config.max_length,
                pooling=model.pooling, device=model.device).float().cpu()
        return out


def text_digest(content: Unpacked | None) -> str:
    """sha256 over what the item tower's output depends on (version 0: the base alone).

    >>> text_digest(None) == text_digest(None) and len(text_digest(None)) == 64
    True
    """
    digest = hashlib.sha256()
    if content is None:
        digest.update(b"base")
        return digest.hexdigest()
    config = content.model_config
    digest.update(json.dumps({"adapter": content.adapter_config, "max_length": config.max_length,
                              "target_modules": list(config.target_modules)}, sort_keys=True, default=str).encode())
    for name in sorted(content.adapter):
        tensor = content.adapter[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def frozen_head(config: ModelConfig, tensors: dict[str, torch.Tensor] | None = None) -> FusionHead:
    head = FusionHead(config)
    if tensors is not None:
        head.load_state_dict(tensors, strict=True)
    for param in head.parameters():
        param.requires_grad_(False)
    return head.eval()


class StateBuilder:
    """Builds serving states off to the side (call it from a worker thread, never the event loop)."""

    def __init__(self, base: Base, config: ModelConfig | None = None) -> None:
        self.base = base
        self.config = config or ModelConfig()
        if self.config.feature_names != FEATURE_NAMES:
            raise ValueError(f"serving computes features {FEATURE_NAMES}, config names {self.config.feature_names}")
        #: Version 0, also the model adapters are checked against for compatibility.
        self.reference = RankingModel(base, self.config)
        self._base_source = VersionSource(base, self.config, None, encoder=self.reference)

    def build(self, content: Unpacked | None, catalogue: CatalogueSnapshot,
              current: ServingState | None = None) -> ServingState:
        """A state for ``content`` (None: version 0) over ``catalogue``.

        Item vectors come from, in order: the payload (when the publisher shipped them), ``current``
        when its text tower is the same (a head-only update: same LoRA weights, same encoding
        settings — the vectors would come out identical), else the encoder.
        """
        start = time.perf_counter()
        if content is None:
            source, head = self._base_source, frozen_head(self.config)
        else:
            source = VersionSource(self.base, content.model_config, content)
            head = frozen_head(content.model_config, content.head)
        texts = list(catalogue.texts)
        if content is not None and content.item_vectors is not None:
            vectors, missing = shipped_item_vectors(content, texts)
        elif current is not None and current.source.text_key == source.text_key:
            vectors, missing = vectors_for_texts(current.catalogue.texts, current.item_vectors, texts)
            source = source.sharing_encoder_with(current.source)
        else:
            vectors, missing = torch.zeros(len(texts), self.base.dim), list(range(len(texts)))
        if missing:
            vectors[torch.tensor(missing, dtype=torch.long)] = source.encode([texts[i] for i in missing])
        built_ms = (time.perf_counter() - start) * 1000
        log.info("built state version=%s items=%d encoded=%d built_ms=%.0f", source.version, len(texts),
                 len(missing), built_ms)
        return ServingState(source.version, source.config, head, vectors, catalogue, source, built_ms)

    def extend(self, state: ServingState, catalogue: CatalogueSnapshot) -> ServingState:
        """``state`` over a newer ``catalogue``: encodes only new items and items whose text changed."""
        start = time.perf_counter()
        old = state.catalogue.texts
        texts = catalogue.texts
        changed = [i for i in range(min(len(old), len(texts))) if old[i] != texts[i]]
        fresh = changed + list(range(len(old), len(texts)))
        vectors = torch.zeros(len(texts), state.item_vectors.shape[1])
        keep = min(len(old), len(texts))
        vectors[:keep] = state.item_vectors[:keep]
        if fresh:
            vectors[torch.tensor(fresh, dtype=torch.long)] = state.source.encode([texts[i] for i in fresh])
        built_ms = (time.perf_counter() - start) * 1000
        log.info("extended state version=%s items=%d encoded=%d built_ms=%.0f", state.version, len(texts),
                 len(fresh), built_ms)
        return ServingState(state.version, state.config, state.head, vectors, catalogue, state.source, built_ms)
