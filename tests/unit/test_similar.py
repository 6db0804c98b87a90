"""``GET /similar``: neighbours of one item, related by co-purchase and text, ranked for a shopper when given.

The serving worker over HTTP without a broker (the ``worker`` and ``client`` fixtures of tests/unit/conftest.py:
a tiny catalogue, version 0 of the tiny encoder).
"""

from __future__ import annotations

import numpy as np

from serving.similar import POOL, relatedness


def index(worker, item_id: str) -> int:
    return worker.live.features.index.index_of(item_id)


def an_item_bought_with_others(worker) -> str:
    state, features = worker.holder.current, worker.live.features
    for i in range(state.n_items):
        co, _ = relatedness(features, state, i)
        if state.catalogue.recommendable[i] and (co > 0).any():
            return worker.live.item_id(i)
    raise AssertionError("no item was bought together with another")


def test_anonymous_neighbours_are_the_most_related_items_and_say_why(client, worker):
    item_id = an_item_bought_with_others(worker)
    body = client.get("/similar", params={"item_id": item_id, "k": 5}).json()
    assert body["item_id"] == item_id and body["model_version"] == "v0" and not body["personalised"]
    state, item = worker.holder.current, index(worker, item_id)
    co, text = relatedness(worker.live.features, state, item)
    related = co + text
    candidates = [i for i in range(state.n_items) if state.catalogue.recommendable[i] and i != item]
    expected = sorted(candidates, key=lambda i: -related[i])[:5]
    items = body["items"]
    assert [i["item_id"] for i in items] == [worker.live.item_id(i) for i in expected]
    assert item_id not in {i["item_id"] for i in items}
    for out, i in zip(items, expected, strict=True):
        explanation = out["explanation"]
        assert out["score"] == round(related[i], 6)
        if co[i] > 0:
            assert explanation["reason"] == "bought_together" and worker.live.title(item) in explanation["text"]
        else:
            assert explanation["reason"] == "similar" and explanation["text"].startswith("Similar to")
    assert items[0]["explanation"]["reason"] == "bought_together"  # co-purchase outweighs text on this data


def test_a_known_shopper_gets_the_related_items_in_the_order_of_their_model_scores(client, worker):
    item_id = an_item_bought_with_others(worker)
    body = client.get("/similar", params={"item_id": item_id, "user_id": "u3", "k": 5}).json()
    assert body["personalised"]
    state, features, item = worker.holder.current, worker.live.features, index(worker, item_id)
    inputs = worker.live.ranking_inputs(state, "u3", worker.settings.max_history)
    scores = state.score_all(inputs.history, inputs.rows)[0].numpy()
    co, text = relatedness(features, state, item)
    candidates = [i for i in range(state.n_items) if state.catalogue.recommendable[i] and i != item]
    pool = sorted(candidates, key=lambda i: -(co[i] + text[i]))[:POOL]
    expected = sorted(pool, key=lambda i: -scores[i])[:5]
    assert [i["item_id"] for i in body["items"]] == [worker.live.item_id(i) for i in expected]
    assert np.allclose([i["score"] for i in body["items"]], [scores[i] for i in expected], atol=1e-5)


def test_an_unknown_shopper_gets_the_unpersonalised_list(client, worker):
    item_id = an_item_bought_with_others(worker)
    anonymous = client.get("/similar", params={"item_id": item_id}).json()
    stranger = client.get("/similar", params={"item_id": item_id, "user_id": "never-seen"}).json()
    assert not stranger["personalised"] and stranger["items"] == anonymous["items"]


def test_bad_requests_are_clear_errors(client):
    assert client.get("/similar", params={"item_id": "NOT-IN-CATALOGUE"}).status_code == 404
    assert client.get("/similar", params={"item_id": "no-such-item"}).json()["detail"].startswith("item 'no-such-item'")
    assert client.get("/similar", params={"item_id": "x", "k": 0}).status_code == 422
    assert client.get("/similar", params={}).status_code == 422


def test_not_ready_is_a_503(base):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.unit.test_serving_app import make_worker

    with TestClient(create_app(make_worker(base, ready=False))) as client:
        assert client.get("/similar", params={"item_id": "22423"}).status_code == 503
