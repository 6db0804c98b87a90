"""The new-item stage of the ranking: the last places of a top ``k`` go to items without a sales history.

The fusion head is trained over the whole catalogue, where repeat purchases dominate; it learns to lean on
behaviour, and an item first sold a few days ago has almost none (no repeat, little popularity, few
co-purchases). Such items rarely reach a shopper's top 10 however well their text fits the shopper — the
one signal they do have. This stage gives them a small, fixed share of the list: when the model's top ``k``
holds fewer than :attr:`NewItemSlate.slots` new items, the best new items by the text tower's cosine to
the shopper's history (:attr:`NewItemSlate.by`) take the last places, in place of the lowest-ranked
established ones. When the model already ranks enough new items, the list is the model's.

An item is *new* for :attr:`NewItemSlate.days` after its first sale, and while it was never sold
(:meth:`learner.rich_features.RichFeatures.item_age_days`, which serving's ranking inputs carry:
:class:`serving.history.RankingInputs`).

:meth:`serving.state.ServingState.top_k` applies it, so ``GET /recommend`` serves it and ``recloop eval``
(which ranks with ``top_k``) measures it; the figures that chose the default are in docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How a new item's fit to the shopper is measured: the cosine to the shopper's text vector (the one the model
#: scores with), or the cosine to the nearest item of their history.
SIMILARITIES = ("profile", "nearest")
#: What the new items that fit are ranked by: that similarity (then the model's score), or the model's score.
RANK_KEYS = ("similarity", "score")
#: Similarities closer than this rank as equal (then by the model's score): :func:`best_new`.
SIMILARITY_STEP = 0.01


@dataclass(frozen=True)
class NewItemSlate:
    """How many of the last places of a top ``k`` are reserved for new items, and which new items may take them.

    >>> NewItemSlate(slots=1, days=7.0).is_new(np.array([0.0, 3.0, 7.0, 30.0])).tolist()
    [True, True, True, False]
    """

    #: Places at the end of the list reserved for new items (0: the model's list unchanged).
    slots: int = 2
    #: An item is new for this many days after its first sale (and while it was never sold).
    days: float = 14.0
    #: A new item takes a place only if its similarity to the shopper (:data:`SIMILARITIES`) is at least this.
    min_similarity: float = 0.85
    similarity: str = "nearest"
    #: What the new items that fit are ranked by (:data:`RANK_KEYS`).
    by: str = "score"
    #: The stage runs only while the text tower tells items apart: the mean cosine between the catalogue's item
    #: vectors (:attr:`serving.state.ServingState.mean_similarity`) at most this. MiniLM's is 0.20 on the bundled
    #: catalogue (0.02 % of item pairs reach 0.85); a random encoder's, 0.86 (61 % do), where the similarity gate
    #: would admit nearly every new item and cost the list its last places for nothing (recloop 0.2655 vs
    #: repeat 0.2687 with the tiny encoder before this check).
    max_mean_similarity: float = 0.5

    def __post_init__(self) -> None:
        if self.slots < 0 or self.days < 0:
            raise ValueError(f"slots and days must not be negative, got {self.slots}, {self.days}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.by not in RANK_KEYS:
            raise ValueError(f"by must be one of {RANK_KEYS}, got {self.by!r}")

    def separates(self, mean_similarity: float) -> bool:
        """Whether a text tower whose items have this mean cosine tells them apart enough for the stage.

        >>> NewItemSlate().separates(0.2), NewItemSlate().separates(0.86)
        (True, False)
        """
        return mean_similarity <= self.max_mean_similarity

    def is_new(self, item_age_days: np.ndarray) -> np.ndarray:
        return np.asarray(item_age_days) <= self.days


#: What serving serves (and ``recloop eval`` measures as ``recloop``).
NEW_ITEM_SLATE = NewItemSlate()
#: The model's list, unchanged.
NO_SLATE = NewItemSlate(slots=0)


def needed(top_is_new: np.ndarray, slots: int) -> int:
    """How many new items the list still needs: ``slots`` (at most the list's length) less those it holds.

    >>> needed(np.array([False, True, False]), 2), needed(np.array([True, True]), 2), needed(np.array([False]), 2)
    (1, 0, 1)
    """
    return max(0, min(slots, len(top_is_new)) - int(np.count_nonzero(top_is_new)))


def reserve_last(top: np.ndarray, top_is_new: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """``top`` (best first) with the lowest-ranked established items replaced by ``picks``, which go last, in order.

    New items already in ``top`` keep their place; ``picks`` must not be in ``top`` and must be at most the
    number of established items of ``top``.

    >>> reserve_last(np.array([5, 6, 7, 8]), np.array([False, False, True, False]), np.array([9, 3])).tolist()
    [5, 7, 9, 3]
    >>> reserve_last(np.array([5, 6]), np.array([False, False]), np.array([], dtype=np.int64)).tolist()
    [5, 6]
    """
    if not len(picks):
        return top
    established = np.flatnonzero(~np.asarray(top_is_new, dtype=bool))
    if len(picks) > len(established):
        raise ValueError(f"{len(picks)} picks for {len(established)} established places")
    return np.concatenate([np.delete(top, established[len(established) - len(picks):]), picks])


def best_new(pool: np.ndarray, similarity: np.ndarray, score: np.ndarray, n: int, by: str = "similarity") -> np.ndarray:
    """The ``n`` best items of ``pool``, best first: by ``similarity`` to :data:`SIMILARITY_STEP` then ``score``
    (``by="similarity"``), or by ``score`` alone; remaining ties: the earlier item first.

    Similarities are compared to a step because a serving worker and the evaluation may encode the catalogue in
    different batches, whose vectors differ in the last digits: the order must not depend on that.

    >>> pool, similarity, score = np.array([4, 2, 9]), np.array([0.8312, 0.8349, 0.91]), np.array([0.3, 0.1, -1.0])
    >>> best_new(pool, similarity, score, 2).tolist(), best_new(pool, similarity, score, 3, by="score").tolist()
    ([9, 4], [4, 2, 9])
    """
    score = np.asarray(score, dtype=np.float64)
    if by == "score":
        order = np.lexsort((-score,))
    else:
        order = np.lexsort((-score, -np.floor(np.asarray(similarity, dtype=np.float64) / SIMILARITY_STEP)))
    return pool[order[:n]]
