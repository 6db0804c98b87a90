"""`GET /recommend?ts=`: the visit's event time is the impression's, so replayed impressions join in event time."""

from __future__ import annotations

import time

import pytest

from streams.records import Impression, decode
from tests.unit.test_serving_app import published, wait_until

REPLAYED = 1_291_191_960.0  # 2010-12-01, a visit of the Online Retail replay


def logged(worker, rec_id: str) -> Impression:
    def find():
        return next((i for i in map(lambda v: decode(Impression, v), published(worker, "impressions"))
                     if i.rec_id == rec_id), None)

    wait_until(lambda: find() is not None)
    return find()


def test_the_impression_carries_the_visits_event_time(client, worker):
    body = client.get("/recommend", params={"user_id": "u1", "k": 3, "ts": REPLAYED}).json()
    assert logged(worker, body["rec_id"]).ts == REPLAYED


def test_without_ts_the_impression_carries_the_wall_clock(client, worker):
    before = time.time()
    body = client.get("/recommend", params={"user_id": "u1", "k": 3}).json()
    assert before <= logged(worker, body["rec_id"]).ts <= time.time()


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", "1e20", "12", "yesterday", ""])
def test_an_implausible_event_time_is_a_422_that_says_why(client, ts):
    response = client.get("/recommend", params={"user_id": "u1", "ts": ts})
    assert response.status_code == 422 and response.json()["detail"].startswith("ts: ")
