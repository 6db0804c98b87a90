"""``recloop eval --search``: how well each searcher finds the item a shopper then bought, from a one-word query.

Protocol (prequential, the periods of :mod:`ops.evaluate`): for each evaluated basket (test period, a
shopper with an earlier basket; every 4th with ``--quick``), up to 3 of its items that were sold before
(the catalogue is what was sold strictly before the basket) become queries: the query is the **last
word of the item's title** (the Online Retail ``Description`` column; the product type, e.g. "holder",
"bag"), lower-cased, kept only when at least :data:`MIN_MATCHING_ITEMS` catalogue items contain that
word — an ambiguous query, so that *which* of the matching items the shopper wants is what counts.
Each searcher ranks the whole catalogue; the bought item's rank counts at its expected position among
ties (no tie favours it); NDCG@10 and HR@10 with one relevant item. Then every model learns the
basket's timestamp group (test, then train).

Searches are also what the learner learns from (:mod:`learner.query_clicks`): each query asked is a search
the shopper made before buying, whose results were recloop's top 10. That search's impression goes to the
learner with the basket, and the purchase names it (``rec_id``) when the results showed the item — the
shopper chose it there — so a version trained after it has seen which result the query meant (scored before,
learned after, like every other event).

Searchers:

* ``bm25``: BM25 over title + description + category (:class:`learner.search.LexicalIndex`);
* ``frozen_text``: cosine of the query to the item under the frozen base encoder;
* ``bm25_personal``: BM25 + ``log1p`` of the shopper's past purchases of the item
  (:func:`learner.search.personal_blend`);
* ``recloop``: :func:`learner.search.search_scores` over what serving would use — the deployed learner's
  published versions, built and scored by serving's code (:class:`ops.served_recommender.ServedRecommender`);
* ``recloop_text``: the served text tower alone (query cosine under base + current adapter), to compare
  the trained adapter with the frozen tower.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from learner.baskets import DEFAULT_DATA_PATH, Basket, timestamp_groups
from learner.encoder import Base, encode_texts, load_base, tiny_bert
from learner.model import ModelConfig, RankingModel
from learner.ranker_config import RankerConfig
from learner.ranking_metrics import K, expected_rank
from learner.search import LexicalIndex, personal_blend, search_scores, words
from ops.evaluate import QUICK_EVERY_NTH, Catalogue, Protocol, is_evaluated
from ops.served_recommender import SearchShown, ServedRecommender
from ops.shop_files import Shop, load_shop

log = logging.getLogger(__name__)

#: A query is kept only when at least this many catalogue items contain its word.
MIN_MATCHING_ITEMS = 20
#: Queries per basket, at most.
QUERIES_PER_BASKET = 3
SEARCHERS = ("bm25", "frozen_text", "bm25_personal", "recloop", "recloop_text")


@dataclass
class SearchTally:
    """NDCG@10 and HR@10 of one searcher, one relevant item per query."""

    ndcg: list[float] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)

    def add(self, rank: float) -> None:
        self.ndcg.append(1.0 / math.log2(rank + 2.0) if rank < K else 0.0)
        self.hit.append(float(rank < K))

    def summary(self) -> dict:
        return {"ndcg@10": round(float(np.mean(self.ndcg)), 4) if self.ndcg else None,
                "hr@10": round(float(np.mean(self.hit)), 4) if self.hit else None}


class FrozenText:
    """Queries and items under the frozen base encoder (LoRA at identity)."""

    def __init__(self, base: Base, texts: list[str]) -> None:
        self.model = RankingModel(base, ModelConfig())
        self.model.set_catalogue(texts)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def cosine(self, query: str, candidates: np.ndarray) -> np.ndarray:
        vector = self._cache.get(query)
        if vector is None:
            model = self.model
            vector = self._cache[query] = torch.nn.functional.normalize(encode_texts(
                model.encoder, model.tokenizer, [query], max_length=model.config.max_length, pooling=model.pooling,
                device=model.device)[0].float().cpu(), dim=-1)
        return (self.model.item_vectors[torch.from_numpy(candidates)].cpu() @ vector).numpy().astype(np.float64)


class QueryWords:
    """The query of each item (the last word of its title) and how many catalogue items contain each word."""

    def __init__(self, shop: Shop) -> None:
        texts = shop.item_texts()
        self._words = [set(words(text)) for text in texts]
        self.query = []
        for i in range(len(texts)):
            item = shop.catalog.get(shop.index.code_of(i))
            title = words(item.title if item is not None and item.title else texts[i])
            self.query.append(title[-1] if title else None)
        self.containing: Counter[str] = Counter()
        self._counted: set[int] = set()

    def add_to_catalogue(self, items) -> None:
        for item in items:
            if item not in self._counted:
                self._counted.add(item)
                self.containing.update(self._words[item])

    def of(self, item: int) -> str | None:
        """``item``'s query if it is ambiguous enough (see :data:`MIN_MATCHING_ITEMS`), else ``None``."""
        word = self.query[item]
        return word if word is not None and self.containing[word] >= MIN_MATCHING_ITEMS else None


def run_search_eval(base: Base, shop: Shop, *, quick: bool, recloop: ServedRecommender,
                    progress: Callable[[int], Callable[[int], None]] | None = None) -> dict:
    """Run the protocol (module docstring) and return ``{"search": {searcher: {...}}, "queries": N, ...}``."""
    started = time.perf_counter()
    protocol = Protocol.for_baskets(shop.baskets, every_nth=QUICK_EVERY_NTH if quick else 1)
    lexical = LexicalIndex(shop.item_texts())
    frozen = FrozenText(base, shop.item_texts())
    queries = QueryWords(shop)
    catalogue = Catalogue()
    tallies = {name: SearchTally() for name in SEARCHERS}
    bought: dict[str, Counter[int]] = {}  # baskets per shopper per item, before now
    searches: dict[tuple[str, int], SearchShown] = {}  # of the group at hand, for the learner
    eligible = 0
    advance = progress(len(shop.baskets)) if progress is not None else None
    for group in timestamp_groups(shop.baskets):
        for basket in group:
            if not is_evaluated(basket, bought, protocol):
                continue
            eligible += 1
            if (eligible - 1) % protocol.every_nth:
                continue
            asked = [(item, query) for item in dict.fromkeys(basket.items)
                     if len(catalogue.positions([item])) and (query := queries.of(item)) is not None]
            if asked:
                searches.update(score_basket(basket, asked[:QUERIES_PER_BASKET], catalogue.candidates, lexical,
                                             frozen, recloop, bought[basket.user_id], tallies))
        recloop.learn(group, searches)
        searches = {}
        catalogue.learn(group)
        queries.add_to_catalogue(item for basket in group for item in basket.items)
        for basket in group:
            bought.setdefault(basket.user_id, Counter()).update(set(basket.items))
        if advance is not None:
            advance(len(group))
    n_queries = len(tallies["bm25"].ndcg)
    return {"search": {name: tally.summary() for name, tally in tallies.items()}, "queries": n_queries,
            "protocol": {**protocol.describe(), "quick": quick, "min_matching_items": MIN_MATCHING_ITEMS,
                         "queries_per_basket": QUERIES_PER_BASKET, "query": "last word of the item's title"},
            "recloop_versions_served": recloop.versions_served,
            "recloop_learned_from_searches": {"searches": recloop.learner.ranker.queries.searches,
                                              "choices": recloop.learner.ranker.queries.examples.seen,
                                              "query_steps": recloop.learner.ranker.query_steps},
            "seconds": round(time.perf_counter() - started, 1)}


def score_basket(basket: Basket, asked: list[tuple[int, str]], candidates: np.ndarray, lexical: LexicalIndex,
                 frozen: FrozenText, recloop: ServedRecommender, bought: Counter[int],
                 tallies: dict[str, SearchTally]) -> dict[tuple[str, int], SearchShown]:
    """Rank the catalogue for each of one basket's queries with every searcher; tally the bought item's rank.
    Returns what recloop's search showed for each query (its top 10), by ``(user_id, item)``."""
    user_id = basket.user_id
    model_scores = recloop.model_score(user_id, candidates)  # the shopper's ranking: one per basket
    past = np.array([bought.get(int(item), 0) for item in candidates], dtype=np.float64)
    shown: dict[tuple[str, int], SearchShown] = {}
    for item, query in asked:
        target = int(np.searchsorted(candidates, item))
        bm25 = lexical.scores(query)[candidates]
        text = recloop.query_cosine(query, candidates)
        rankings = {"bm25": bm25, "frozen_text": frozen.cosine(query, candidates),
                    "bm25_personal": personal_blend(bm25, past),
                    "recloop": search_scores(bm25, model_scores, text), "recloop_text": text}
        for name, scores in rankings.items():
            tallies[name].add(expected_rank(scores, target))
        top = candidates[np.argsort(-rankings["recloop"], kind="stable")[:K]]
        shown[(user_id, item)] = SearchShown(f"search|{user_id}|{basket.ts}|{item}", query,
                                             tuple(int(i) for i in top))
    return shown


def run_search(*, quick: bool, tiny: bool = False, model_dir: Path | None = None,
               data_path: Path = DEFAULT_DATA_PATH, out_dir: Path | None = None, threads: int | None = 1,
               progress: Callable[[int], Callable[[int], None]] | None = None,
               config: RankerConfig | None = None) -> dict:
    """``recloop eval --search``: load the base and the shop, run :func:`run_search_eval`, write ``search.json``."""
    if threads:
        torch.set_num_threads(threads)
    base = tiny_bert(seed=0) if tiny else load_base(model_dir)
    shop = load_shop(data_path)
    recloop = ServedRecommender(base, shop.items(), config=config)
    try:
        result = run_search_eval(base, shop, quick=quick, recloop=recloop, progress=progress)
    finally:
        recloop.close()
    result["base"] = {"name": base.name, "fingerprint": base.fingerprint[:16], "tiny": tiny}
    result["protocol"]["data"] = str(data_path)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "search.json").write_text(json.dumps(result, indent=2))
    log.info("search evaluation: %s", result["search"])
    return result
