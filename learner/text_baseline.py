"""The frozen pretrained encoder as a recommender: what text alone, untrained, gets you.

``recloop eval`` compares it with recloop's trained text tower (on the discovery subset above all:
items new to the shopper, where their own history cannot help).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from learner.baskets import Basket
from learner.encoder import Base
from learner.model import ModelConfig, RankingModel


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
