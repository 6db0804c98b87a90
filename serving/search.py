"""``GET /search``: the catalogue searched for one shopper's query, ranked by the model that ranks ``/recommend``.

The ranking is :func:`learner.search.search_scores`, the one ``recloop eval --search`` measures
(docs/evaluation.md, "Search"):

1. items whose text (title, description, category) matches a word of the query — BM25 over the catalogue
   (:class:`learner.search.LexicalIndex`, the ``bm25s`` library) — come first, those matching more of the
   query's words before the others, each group ordered by the shopper's score under the serving model
   version (the score ``/recommend`` ranks by), BM25 breaking near-ties;
2. then every other item, by the cosine between the query, encoded by the serving text tower (frozen base
   plus the current adapter), and the item's vector: what a query without an exact word match still finds.

A shopper the model does not know (or no ``user_id``) gets the same ranking with recent popularity in place
of the personal score. Each result is explained as ``/recommend`` explains its items (contributions of the
shopper's score, cited history, calibrated confidence), with the query's words the item's text matched.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from learner.search import LexicalIndex, search_scores, words
from serving.explain import Explanation
from serving.state import CatalogueSnapshot, ServingState

#: Encoded queries kept per text tower (a shop's queries repeat: "bag", "holder", ...).
QUERY_CACHE = 4096


@dataclass(frozen=True)
class SearchHits:
    """The top of one search: items (feature index), their search scores, and the model's scores behind them."""

    items: np.ndarray
    scores: np.ndarray  #: what the list is ranked by (:func:`learner.search.search_scores`)
    model_scores: np.ndarray  #: the shopper's model score (popularity for an unknown shopper)
    lexical: np.ndarray  #: BM25 of each item for the query (0: found by the text tower alone)
    query_cosine: np.ndarray


class CatalogueSearch:
    """The lexical index of the serving catalogue and the encoded queries, each rebuilt only when stale.

    Thread-safe: :meth:`index` and :meth:`query_vector` may run in worker threads.
    """

    def __init__(self, cache_size: int = QUERY_CACHE) -> None:
        self._lock = threading.Lock()
        self._index: tuple[int, int, LexicalIndex] | None = None  # (generation, n_items, index)
        self._vectors: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def index(self, catalogue: CatalogueSnapshot) -> LexicalIndex:
        """BM25 over ``catalogue``'s item texts (about 60 ms for 4,000 items; built once per catalogue change)."""
        with self._lock:
            cached = self._index
        if cached is not None and cached[0] == catalogue.generation and cached[1] == len(catalogue):
            return cached[2]
        index = LexicalIndex(catalogue.texts)
        with self._lock:
            self._index = (catalogue.generation, len(catalogue), index)
        return index

    def query_vector(self, state: ServingState, query: str) -> torch.Tensor:
        """``query`` encoded by ``state``'s text tower, unit length (cached per text tower and query)."""
        key = (state.source.text_key, query)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
                return vector
        vector = torch.nn.functional.normalize(state.source.encode([query])[0], dim=-1)
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > self._cache_size:
                self._vectors.popitem(last=False)
        return vector

    def matches(self, state: ServingState, query: str) -> np.ndarray:
        """The items of ``state`` whose text contains a word of ``query`` (BM25 > 0), ascending."""
        return np.flatnonzero(self.index(state.catalogue).scores(query)[: state.n_items] > 0)

    def search(self, state: ServingState, query: str, model_scores: np.ndarray, allowed: np.ndarray,
               k: int) -> SearchHits:
        """The ``k`` best ``allowed`` items of ``state`` for ``query`` given the shopper's ``model_scores`` (only
        those of the :meth:`matches` are read)."""
        index = self.index(state.catalogue)
        lexical, coverage = index.scores(query)[: state.n_items], index.coverage(query)[: state.n_items]
        with torch.inference_mode():
            cosine = (state.item_vectors @ self.query_vector(state, query)).numpy().astype(np.float64)
        ranked = search_scores(lexical, np.asarray(model_scores, dtype=np.float64), cosine, coverage=coverage)
        ids = np.flatnonzero(allowed[: state.n_items])
        if len(ids) > k:
            ids = ids[np.argpartition(-ranked[ids], k - 1)[:k]]
        top = ids[np.lexsort((ids, -ranked[ids]))]  # best first; ties by index, so a list is reproducible
        return SearchHits(top, ranked[top], np.asarray(model_scores)[top], lexical[top], cosine[top])


def with_query(explanation: Explanation, query: str, item_text: str) -> Explanation:
    """``explanation`` of a search result, led by the query's words the item's text contains (the words BM25
    matched), or by the text tower's reason when it contains none.

    >>> e = Explanation("e1", "popular", (), (), 0.5, "Popular: bought in 3 baskets in the last 30 days")
    >>> with_query(e, "Lunch bag", "JUMBO BAG RED RETROSPOT").text
    'Matches "Lunch bag" (bag). Popular: bought in 3 baskets in the last 30 days'
    >>> found = with_query(e, "tea", "MUG")
    >>> found.matching_words, found.text[:38]
    ((), 'Close in meaning to "tea" (text model)')
    """
    text_words = set(words(item_text))
    matched = tuple(dict.fromkeys(w for w in words(query) if w in text_words))
    quoted = query.strip()[:80]
    lead = (f'Matches "{quoted}" ({", ".join(matched)})' if matched
            else f'Close in meaning to "{quoted}" (text model)')
    return dataclasses.replace(explanation, matching_words=matched, text=f"{lead}. {explanation.text}")
