"""Search over the catalogue: lexical matching (BM25, the ``bm25s`` library) re-ranked by the shopper's model.

A shop's search query is usually a product type ("holder", "bag"): dozens of items match it equally
well as text, and which of them *this* shopper wants is what the ranking model knows. recloop's search
therefore ranks

1. the items whose text matches the query (BM25 > 0) — those matching more of the query's words first —
   by the shopper's full ranking score — the same score ``/recommend`` ranks with (repeat, co-purchase,
   popularity, shopper statistics and the text tower, :class:`serving.state.ServingState`) — with BM25 as a
   small additive tie-breaker;
2. then every other item by the text tower's cosine between the query and the item (what a query with
   no exact word match can still find).

:func:`personal_blend` is the one-line baseline it is measured against (``recloop eval --search``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import bm25s
import numpy as np

#: bm25s' default token pattern (words of two or more characters), lower-cased: queries and texts alike.
TOKEN = re.compile(r"(?u)\b\w\w+\b")
#: How much BM25 counts inside the lexical matches, against the model score's rank (0..1).
LEXICAL_WEIGHT = 0.1
#: Distinct queries whose scores a :class:`LexicalIndex` keeps (least recently used go first).
CACHED_QUERIES = 4096


def words(text: str) -> list[str]:
    """The searchable words of ``text``.

    >>> words("WHITE HANGING HEART T-LIGHT HOLDER")
    ['white', 'hanging', 'heart', 'light', 'holder']
    """
    return TOKEN.findall(text.lower())


class LexicalIndex:
    """BM25 over the item texts (title, description and category), one row per item int."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.n_items = len(texts)
        self._retriever = bm25s.BM25()
        tokens = bm25s.tokenize(list(texts), lower=True, stopwords=None, show_progress=False)
        self._retriever.index(tokens, show_progress=False)
        self._vocabulary = set(tokens.vocab)
        self._cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def _terms(self, query: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w for w in words(query) if w in self._vocabulary))

    def _scores(self, terms: tuple[str, ...]) -> np.ndarray:
        cached = self._cache.get(terms)
        if cached is not None:
            self._cache.move_to_end(terms)
            return cached
        if terms:
            cached = np.asarray(self._retriever.get_scores(list(terms)), dtype=np.float64)
        else:
            cached = np.zeros(self.n_items)
        self._cache[terms] = cached
        while len(self._cache) > CACHED_QUERIES:
            self._cache.popitem(last=False)
        return cached

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every item for ``query`` (zeros when no word of it is in any item text).

        >>> index = LexicalIndex(["red bag", "jumbo bag red retrospot", "heart holder"])
        >>> (index.scores("bag") > 0).tolist(), index.scores("unknown").tolist()
        ([True, True, False], [0.0, 0.0, 0.0])
        """
        return self._scores(self._terms(query))

    def coverage(self, query: str) -> np.ndarray:
        """How many distinct words of ``query`` each item's text contains.

        >>> LexicalIndex(["red bag", "red heart holder", "heart holder"]).coverage("red holder").tolist()
        [1, 2, 1]
        """
        terms = self._terms(query)
        if len(terms) < 2:
            return (self._scores(terms) > 0).astype(np.int64)
        return sum((self._scores((term,)) > 0).astype(np.int64) for term in terms)


def normalised_rank(values: np.ndarray) -> np.ndarray:
    """Each value's rank among ``values`` scaled to [0, 1] (ties share their average rank; -inf ranks lowest).

    >>> normalised_rank(np.array([0.5, 2.0, 0.5, -np.inf])).tolist()
    [0.5, 1.0, 0.5, 0.0]
    """
    if len(values) < 2:
        return np.ones(len(values))
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - counts + (counts - 1) / 2
    return average[inverse] / (len(values) - 1)


def search_scores(lexical: np.ndarray, model_scores: np.ndarray, query_cosine: np.ndarray,
                  lexical_weight: float = LEXICAL_WEIGHT, coverage: np.ndarray | None = None) -> np.ndarray:
    """recloop's search ranking (module docstring): lexical matches first, those matching more of the query's
    words (``coverage``, :meth:`LexicalIndex.coverage`; None: all alike) before the others, each group by the
    shopper's model score (BM25 breaking near-ties), then the rest by the text tower's query cosine. Higher is
    better.

    >>> search_scores(np.array([0.0, 1.0, 1.2]), np.array([9.0, 2.0, 1.0]), np.array([0.9, 0.1, 0.2])).round(2).tolist()
    [1.0, 3.08, 2.1]
    >>> search_scores(np.array([0.0, 1.0, 1.2]), np.array([9.0, 2.0, 1.0]), np.zeros(3), coverage=np.array([0, 1, 2])
    ...               ).round(2).tolist()
    [1.0, 3.08, 4.1]
    """
    matched = lexical > 0
    top = float(lexical.max(initial=0.0))
    out = np.zeros(len(lexical))
    if matched.any():  # ranks among the matches only, so BM25 only breaks what the model barely separates
        tier = 0.0 if coverage is None else 2.0 * (np.asarray(coverage)[matched] - 1)
        out[matched] = (2.0 + tier + normalised_rank(model_scores[matched])
                        + lexical_weight * lexical[matched] / top)
    if not matched.all():
        out[~matched] = normalised_rank(query_cosine[~matched])
    return out


def personal_blend(lexical: np.ndarray, past_purchases: np.ndarray) -> np.ndarray:
    """The one-line personal baseline: BM25 plus ``log1p`` of how often the shopper bought each item before.

    >>> personal_blend(np.array([1.0, 1.0]), np.array([0, 3])).round(3).tolist()
    [1.0, 2.386]
    """
    return lexical + np.log1p(past_purchases)
