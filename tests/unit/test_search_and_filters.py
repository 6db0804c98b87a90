"""``GET /search`` and the business filters of every list route, over HTTP without a broker.

A small serving worker (tests/unit/test_serving_app.make_worker: 42 items "<COLOUR> <THING>", 30 shoppers,
version 0 of the tiny encoder) whose catalogue this module re-describes with categories, prices and stock.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from learner.search import search_scores
from serving.app import create_app
from streams.records import Impression, Item, decode
from tests.unit.test_serving_app import make_worker, published
from tests.unit.test_serving_state import TITLES


def describe(worker, i: int, **fields) -> None:
    """Item ``i`` of the test catalogue with ``fields`` (category, price, available), as a catalog event says."""
    worker.live.learn_item(Item(item_id=f"I{i:03d}", title=TITLES[i], **fields))


@pytest.fixture(scope="module")
def worker(base):
    worker = make_worker(base)
    for i, title in enumerate(TITLES):  # things are categories; price = 1 + index; the first 30 in stock
        describe(worker, i, category=title.split()[1].title(), price=1.0 + i, available=True if i < 30 else None)
    return worker


@pytest.fixture(scope="module")
def client(worker):
    with TestClient(create_app(worker)) as client:
        yield client


def impressions(worker) -> list[Impression]:
    return [decode(Impression, value) for value in published(worker, "impressions")]


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


# --------------------------------------------------------------------------- /search


def test_a_known_shopper_finds_the_matching_items_first_in_the_order_of_their_model_scores(client, worker):
    body = client.get("/search", params={"q": "mug", "user_id": "u3", "k": 8}).json()
    assert body["query"] == "mug" and body["personalised"] and body["model_version"] == "v0"
    mugs = [n for n, title in enumerate(TITLES) if title.endswith(" MUG")]
    assert ids(body)[: len(mugs)] and set(ids(body)[: len(mugs)]) == {f"I{n:03d}" for n in mugs}
    state, live = worker.holder.current, worker.live
    inputs = live.ranking_inputs(state, "u3", worker.settings.max_history)
    scores = state.score_all(inputs.history, inputs.rows)[0].numpy()
    expected = sorted(mugs, key=lambda n: -scores[live.features.index.index_of(f"I{n:03d}")])
    assert ids(body)[: len(mugs)] == [f"I{n:03d}" for n in expected]  # same BM25 for all: the model decides
    for item in body["items"][: len(mugs)]:
        assert item["explanation"]["matching_words"] == ["mug"]
        assert item["explanation"]["text"].startswith('Matches "mug" (mug). ')
        assert item["explanation"]["contributions"]  # the shopper's score, explained as /recommend explains it
    after = body["items"][len(mugs)]
    assert after["explanation"]["matching_words"] == [] and "Close in meaning" in after["explanation"]["text"]


def test_the_search_ranking_is_the_one_the_eval_measures(client, worker):
    body = client.get("/search", params={"q": "red lamp", "user_id": "u5", "k": 42}).json()
    state, live = worker.holder.current, worker.live
    inputs = live.ranking_inputs(state, "u5", worker.settings.max_history)
    model = state.score_all(inputs.history, inputs.rows)[0].numpy().astype(np.float64)
    search = worker.recommender.catalogue_search
    index = search.index(state.catalogue)
    lexical, coverage = index.scores("red lamp")[: state.n_items], index.coverage("red lamp")[: state.n_items]
    cosine = (state.item_vectors @ search.query_vector(state, "red lamp")).numpy().astype(np.float64)
    ranked = search_scores(lexical, model, cosine, coverage=coverage)
    allowed = [n for n in range(state.n_items) if state.catalogue.recommendable[n]]
    expected = sorted(allowed, key=lambda n: (-ranked[n], n))[:42]
    assert ids(body) == [live.item_id(n) for n in expected]
    assert ids(body)[0] == "I002"  # RED LAMP matches both words: before every item matching one


def test_search_impressions_carry_their_source_and_query_and_anonymous_searches_none(client, worker):
    before = len(impressions(worker))
    rec_id = client.get("/search", params={"q": "candle", "user_id": "u7"}).json()["rec_id"]
    anonymous = client.get("/search", params={"q": "candle"}).json()
    assert not anonymous["personalised"] and anonymous["items"]
    assert anonymous["items"][0]["explanation"]["style"] == "popular"
    logged = impressions(worker)[before:]
    assert [(i.rec_id, i.source, i.query, i.route) for i in logged] == [(rec_id, "search", "candle", "search")]


def test_anonymous_matches_are_ordered_by_recent_popularity(client, worker):
    body = client.get("/search", params={"q": "heart", "k": 6}).json()
    live = worker.live
    popularity = live.features.popularity.scores(np.arange(len(live.features.index)))
    hearts = [live.features.index.index_of(i) for i in ids(body)]
    assert [popularity[n] for n in hearts] == sorted((popularity[n] for n in hearts), reverse=True)
    assert all(TITLES[int(i[1:])].endswith("HEART") for i in ids(body))


def test_bad_queries_are_refused(client):
    assert client.get("/search", params={"q": ""}).status_code == 422
    assert client.get("/search", params={"q": "   "}).status_code == 422
    assert client.get("/search", params={"q": "bag\x00"}).status_code == 422
    assert client.get("/search", params={"q": "x" * 513}).status_code == 422
    assert client.get("/search", params={"q": "bag", "k": 0}).status_code == 422


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize("route, params", [
    ("/recommend", {"user_id": "u3"}), ("/search", {"q": "red", "user_id": "u3"}),
    ("/similar", {"item_id": "I001", "user_id": "u3"}), ("/recommend", {"user_id": "stranger"}),
    ("/search", {"q": "red"}), ("/similar", {"item_id": "I001"})])
def test_every_list_route_applies_every_filter(client, worker, route, params):
    def listed(**filters) -> list[int]:
        response = client.get(route, params={**params, "k": 42, **filters})
        assert response.status_code == 200, response.text
        return [int(i[1:]) for i in ids(response.json())]

    assert {TITLES[n].split()[1] for n in listed(category="mug")} == {"MUG"}  # case-insensitive
    assert all(5 <= 1 + n <= 12 for n in listed(price_min=5, price_max=12))
    assert listed(price_min=5, price_max=12)
    assert all(n < 30 for n in listed(in_stock="true"))
    assert any(n >= 30 for n in listed())  # availability not said: listed unless in_stock is asked for
    bought = set(worker.live.features.repeat.items_of(params.get("user_id", "")))
    kept = {worker.live.features.index.index_of(f"I{n:03d}") for n in listed(exclude_purchased="true")}
    assert not kept & bought


def test_filters_no_item_could_pass_are_a_clear_422(client):
    response = client.get("/recommend", params={"user_id": "u3", "category": "Toys"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("unknown category 'Toys'; the catalogue's categories are: Bag, ")
    response = client.get("/search", params={"q": "bag", "price_min": 9, "price_max": 2})
    assert response.status_code == 422 and response.json()["detail"] == "price_min (9) is above price_max (2)"
    assert client.get("/similar", params={"item_id": "I001", "price_max": -1}).status_code == 422
    assert client.get("/recommend", params={"user_id": "u3", "in_stock": "maybe"}).status_code == 422


def test_an_item_out_of_stock_or_removed_leaves_every_list_with_that_one_catalog_event(client, worker, base):
    shop = make_worker(base)
    with TestClient(create_app(shop)) as api:
        first = ids(api.get("/recommend", params={"user_id": "u3", "k": 1}).json())[0]
        generation = shop.holder.current.catalogue.generation
        shop.live.learn_item(Item(item_id=first, title=TITLES[int(first[1:])], available=False))
        assert shop.holder.current.catalogue.generation == generation  # the serving state is not refreshed yet
        for route, params in (("/recommend", {"user_id": "u3"}), ("/search", {"q": TITLES[int(first[1:])]}),
                              ("/similar", {"item_id": "I000" if first != "I000" else "I001"})):
            assert first not in ids(api.get(route, params={**params, "k": 42}).json()), route
        shop.live.learn_item(Item(item_id=first, title=TITLES[int(first[1:])], available=True))
        assert ids(api.get("/recommend", params={"user_id": "u3", "k": 1}).json()) == [first]  # back in stock
        shop.live.apply("catalog", first.encode(), None)  # a tombstone
        assert first not in ids(api.get("/recommend", params={"user_id": "u3", "k": 42}).json())


def test_each_route_names_itself_on_its_impressions(client, worker):
    before = len(impressions(worker))
    client.get("/recommend", params={"user_id": "u3"})
    client.get("/similar", params={"item_id": "I002", "user_id": "u3"})
    client.get("/similar", params={"item_id": "I002"})  # anonymous: nothing to join it with
    logged = impressions(worker)[before:]
    assert [(i.source, i.page_item_id) for i in logged] == [("recommend", None), ("similar", "I002")]
    assert orjson.loads(published(worker, "impressions")[-1])["source"] == "similar"
