"""Search: the lexical index, recloop's search ranking and ``recloop eval --search`` on a small generated shop.

The shop is synthetic (24 holders, 16 bags, shoppers who keep buying their two favourite holders) and the
encoder a seeded tiny BERT, so the test is fast; the figures on the bundled data are in BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

from learner.baskets import Basket, ItemIndex
from learner.encoder import tiny_bert
from learner.search import LexicalIndex, search_scores
from ops.eval_search import MIN_MATCHING_ITEMS, SEARCHERS, QueryWords, run_search_eval
from ops.served_recommender import ServedRecommender
from ops.shop_files import Shop
from streams.records import Item

DAY = 86400.0
T0 = 1.6e9  # 2020-09-13: other dates than the bundled data's


def generated_shop() -> Shop:
    colours = ["RED", "BLUE", "PINK", "GREEN", "IVORY", "BLACK"]
    titles = [f"{colour} {shape} HOLDER" for colour in colours for shape in ("HEART", "STAR", "CANDLE", "LANTERN")]
    titles += [f"{colour} {size} BAG" for colour in colours[:4] for size in ("JUMBO", "MINI", "TOTE", "LUNCH")]
    catalog = {f"sku-{i:03d}": Item(f"sku-{i:03d}", title) for i, title in enumerate(titles)}
    index = ItemIndex(catalog)
    rng = np.random.default_rng(3)
    baskets = []
    for day in range(240):  # every item is sold in the first days; each shopper keeps two favourite holders
        for shopper in range(12):
            if (day + shopper) % 6:
                continue
            favourites = (shopper % 24, (shopper * 5 + 1) % 24)
            items = {favourites[day % 2], int(rng.integers(24, 40)), int(rng.integers(0, 24))}
            ts = T0 + day * DAY + shopper
            baskets.append(Basket(f"shopper-{shopper}", ts, tuple(sorted(items)), f"b{day}-{shopper}"))
    baskets += [Basket("opener", T0 - DAY, tuple(range(40)), "opening")]  # the whole catalogue sold once, first
    return Shop(sorted(baskets, key=lambda b: (b.ts, b.user_id)), index, catalog)


def test_lexical_matches_come_first_ranked_by_the_shoppers_model():
    lexical = LexicalIndex(["red heart holder", "blue star holder", "red jumbo bag"]).scores("holder")
    assert (lexical > 0).tolist() == [True, True, False]
    scores = search_scores(lexical, model_scores=np.array([0.1, 5.0, 9.0]), query_cosine=np.array([0.0, 0.0, 1.0]))
    assert np.argsort(-scores).tolist() == [1, 0, 2]  # the bag, however much the shopper likes it, comes last


def test_only_ambiguous_words_become_queries():
    shop = generated_shop()
    words = QueryWords(shop)
    words.add_to_catalogue(range(40))
    holder = shop.index.index_of("sku-000")
    bag = shop.index.index_of("sku-030")
    assert words.of(holder) == "holder" and words.containing["holder"] == 24 >= MIN_MATCHING_ITEMS
    assert words.of(bag) is None  # 16 bags: fewer than MIN_MATCHING_ITEMS items contain "bag"


def test_the_search_eval_prints_every_searcher_and_personal_search_beats_bm25():
    shop = generated_shop()
    base = tiny_bert(seed=0)
    recloop = ServedRecommender(base, shop.items())
    try:
        result = run_search_eval(base, shop, quick=False, recloop=recloop)
    finally:
        recloop.close()
    assert set(result["search"]) == set(SEARCHERS) and result["queries"] > 50
    search = {name: figures["ndcg@10"] for name, figures in result["search"].items()}
    # BM25 cannot tell 24 holders apart; the shopper's history can
    assert search["bm25_personal"] > search["bm25"] + 0.2
    assert search["recloop"] > search["bm25"] + 0.2
