"""The ranking model as the learner trains it: an item tower that encodes each distinct text once, in length buckets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from learner.model import RankingModel


class StreamingRankingModel(RankingModel):
    """The ranking model as the learner trains it: its item tower encodes each distinct text once, in length buckets.

    Product titles are short and uneven (3–15 WordPiece tokens on the UCI data, mean 7.4), so
    padding the items of a step to the longest of them wastes about half the encoder's work.
    Distinct texts are sorted by token count and encoded ``bucket_size`` at a time, each bucket
    padded only to its own longest text; rows come back in the caller's order (items sharing a
    text share its row). Padding is masked, so vectors equal :class:`RankingModel`'s up to float
    rounding and adapters are interchangeable between the two.
    """

    def __init__(self, *args: Any, bucket_size: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bucket_size = bucket_size
        self._token_counts: dict[str, int] = {}

    def encode_items(self, indices: Sequence[int]) -> torch.Tensor:
        indices = list(indices)
        texts = [self.item_texts[i] for i in indices]
        position = {text: k for k, text in enumerate(dict.fromkeys(texts))}  # distinct text -> its slot
        if len(position) == len(texts) and (self.bucket_size <= 0 or len(texts) <= self.bucket_size):
            return super().encode_items(indices)
        representative = list({text: i for i, text in zip(reversed(indices), reversed(texts), strict=True)}.items())
        representative.sort(key=lambda pair: position[pair[0]])  # slot order
        order = sorted(range(len(representative)), key=lambda k: self._tokens(representative[k][0]))
        step = self.bucket_size if self.bucket_size > 0 else len(order)
        encoded = torch.cat([super(StreamingRankingModel, self).encode_items(
            [representative[k][1] for k in order[s:s + step]]) for s in range(0, len(order), step)])
        row_of_slot = torch.empty(len(order), dtype=torch.long, device=encoded.device)
        row_of_slot[torch.tensor(order, device=encoded.device)] = torch.arange(len(order), device=encoded.device)
        return encoded[row_of_slot[torch.tensor([position[t] for t in texts], device=encoded.device)]]

    def _tokens(self, text: str) -> int:
        count = self._token_counts.get(text)
        if count is None:
            ids = self.tokenizer(text, truncation=True, max_length=self.config.max_length)["input_ids"]
            count = self._token_counts[text] = len(ids)
        return count
