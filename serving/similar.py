"""``GET /similar``: the neighbours of one item for its product page, ranked for the shopper when one is given.

Every recommendable item of the serving version is related to the page's item in two ways: the **co-purchase**
cosine of the two items (how often shoppers bought them in the same basket, normalised: the kNN column's
similarity, :class:`learner.baselines.CoOccurrence`) and the **text** cosine of their vectors under the serving
version's text tower. Their sum ranks the catalogue; the ``POOL`` most related items are the candidates.

- Without a shopper (or one the model does not know yet) the candidates are shown in that order.
- With a known shopper they are ranked by the current model's score for that shopper, the score ``/recommend``
  ranks by: among the items related to this one, the ones this shopper is likeliest to buy come first.

Each item says why it is there: "Often bought together with …" when shoppers bought the two together, else
"Similar to …" with the words the two titles share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from learner.rich_features import RichFeatures
from serving.explain import matching_words
from serving.state import ServingState

#: How many of the most related items the shopper's model ranks.
POOL = 100


@dataclass(frozen=True)
class Neighbour:
    item: int
    score: float  #: what the list is ranked by: relatedness, or the shopper's model score
    co_purchase: float
    text: float


def relatedness(features: RichFeatures, state: ServingState, item: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-purchase and text cosine of every item of ``state`` to ``item`` (``[n_items]`` each)."""
    candidates = np.arange(state.n_items)
    co_purchase = features.cooccurrence.similarity([item], candidates)[0]
    with torch.inference_mode():
        text = (state.item_vectors @ state.item_vectors[item]).numpy()
    return co_purchase.astype(np.float64), text.astype(np.float64)


def similar_items(features: RichFeatures, state: ServingState, item: int, k: int, allowed: np.ndarray,
                  personal: np.ndarray | None = None, pool: int = POOL) -> list[Neighbour]:
    """The ``k`` neighbours of ``item``: the ``pool`` most related ``allowed`` items (``[n_items]`` mask: listed
    and passing the request's filters), ranked by ``personal`` (the shopper's model scores over the catalogue)
    when given, else by relatedness."""
    co_purchase, text = relatedness(features, state, item)
    related = co_purchase + text
    allowed = np.asarray(allowed[:state.n_items], dtype=bool).copy()
    allowed[item] = False
    ids = np.flatnonzero(allowed)
    candidates = ids[np.argsort(-related[ids], kind="stable")[:pool]]
    ranking = related if personal is None else np.asarray(personal, dtype=np.float64)
    top = candidates[np.argsort(-ranking[candidates], kind="stable")][:k]
    return [Neighbour(int(i), float(ranking[i]), float(co_purchase[i]), float(text[i])) for i in top]


def explain_neighbour(neighbour: Neighbour, item: int, title_of: Callable[[int], str]) -> dict:
    """Why ``neighbour`` is on ``item``'s page, in words and in the two numbers behind them.

    >>> titles = {0: "RED HEART MUG", 1: "WHITE HEART MUG", 2: "TEA TOWEL"}
    >>> explain_neighbour(Neighbour(1, 0.9, 0.0, 0.8), 0, titles.get)["text"]
    'Similar to RED HEART MUG (heart, mug)'
    >>> explain_neighbour(Neighbour(2, 0.5, 0.4, 0.1), 0, titles.get)["reason"]
    'bought_together'
    """
    title = title_of(item)
    if neighbour.co_purchase > 0:
        return {"reason": "bought_together", "text": f"Often bought together with {title}", "matching_words": [],
                "co_purchase": round(neighbour.co_purchase, 6), "text_similarity": round(neighbour.text, 6)}
    words = matching_words(title_of(neighbour.item), [title])
    text = f"Similar to {title}" + (f" ({', '.join(words)})" if words else "")
    return {"reason": "similar", "text": text, "matching_words": list(words),
            "co_purchase": round(neighbour.co_purchase, 6), "text_similarity": round(neighbour.text, 6)}
