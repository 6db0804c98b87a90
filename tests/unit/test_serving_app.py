"""The serving worker over HTTP without a broker: ranking, validation, impressions, feedback, hot-swap checks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from learner import artifacts
from learner.encoder import tiny_bert
from learner.model import ModelConfig, RankingModel
from serving.app import create_app
from serving.publishing import MemoryPublisher
from serving.settings import ServingConfigError, ServingSettings
from serving.updates import BootBacklog
from serving.worker import ServingWorker
from streams.records import ExplanationFeedback, Impression, Interaction, Item, decode, encode
from tests.unit.test_serving_state import make_live

KEY = "serving-app-test-key"


def make_worker(base, *, ready: bool = True) -> ServingWorker:
    live = make_live()
    last = live.features.clock
    live.learn_interaction(Interaction("x1", "u0", "NOT-IN-CATALOGUE", "purchase", last + 60))
    live.features.flush()
    worker = ServingWorker(ServingSettings(adapter_key=KEY), base, live=live, publisher=MemoryPublisher())
    if ready:
        asyncio.run(worker.updater.serve_base())
    return worker


def wait_until(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail("condition not met in time")


def published(worker, topic_name: str) -> list[bytes]:
    return [value for topic, _, value in worker.publisher.messages if topic == f"recloop.{topic_name}"]


# --------------------------------------------------------------------------- /recommend


def test_recommend_ranks_the_whole_catalogue_with_the_current_model(client, worker):
    response = client.get("/recommend", params={"user_id": "u3", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "v0" and len(body["rec_id"]) == 32 and body["rec_id"].isalnum()
    state, features = worker.holder.current, worker.live.features
    scores, _ = state.score_all(state.usable_history(features.history("u3")),
                                features.matrix("u3", np.arange(state.n_items)))
    recommendable = [i for i in range(state.n_items) if state.catalogue.recommendable[i]]
    expected = sorted(recommendable, key=lambda i: -float(scores[i]))[:5]
    assert [item["item_id"] for item in body["items"]] == [worker.live.item_id(i) for i in expected]
    assert [item["score"] for item in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)
    first = body["items"][0]
    assert first["title"] == worker.live.title(expected[0])
    assert set(first["explanation"]) == {"explanation_id", "style", "cited", "matching_words", "confidence", "text",
                                         "contributions", "baseline"}
    for item in body["items"]:  # the named contributions add up to the score the response carries
        explanation = item["explanation"]
        assert explanation["baseline"] + sum(explanation["contributions"].values()) == pytest.approx(item["score"],
                                                                                                    abs=1e-4)


def test_items_outside_the_catalogue_are_never_recommended(client):
    items = client.get("/recommend", params={"user_id": "u0", "k": 1000}).json()["items"]
    assert len(items) == 42 and "NOT-IN-CATALOGUE" not in {i["item_id"] for i in items}


def test_unknown_shopper_gets_recent_popularity_honestly_explained(client, worker):
    body = client.get("/recommend", params={"user_id": "somebody-new", "k": 3}).json()
    ranked = [worker.live.item_id(int(i)) for i in worker.live.features.popular(50)]
    popular = [item for item in ranked if item.startswith("I")][:3]
    assert [item["item_id"] for item in body["items"]] == popular
    assert {item["explanation"]["style"] for item in body["items"]} == {"popular"}
    assert "we do not know your purchases yet" in body["items"][0]["explanation"]["text"]


@pytest.mark.parametrize("k, message", [("0", "greater than or equal to 1"), ("-3", "greater than or equal to 1"),
                                        ("1001", "less than or equal to 1000"), ("ten", "valid integer"),
                                        ("2.5", "valid integer"), ("", "valid integer")])
def test_bad_k_is_a_422_that_says_why(client, k, message):
    response = client.get("/recommend", params={"user_id": "u1", "k": k})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("k: ") and message in response.json()["detail"]


@pytest.mark.parametrize("params", [{}, {"user_id": ""}, {"user_id": "x" * 129}, {"user_id": "a\x00b"}])
def test_bad_user_id_is_a_422(client, params):
    response = client.get("/recommend", params=params)
    assert response.status_code == 422 and "user_id" in response.json()["detail"]


def test_not_ready_is_a_503(base):
    worker = make_worker(base, ready=False)
    with TestClient(create_app(worker)) as client:
        assert client.get("/recommend", params={"user_id": "u1"}).status_code == 503
        assert client.get("/healthz").status_code == 503


def test_every_response_is_logged_as_an_impression_without_waiting(client, worker):
    rec_ids = [client.get("/recommend", params={"user_id": user, "k": 4}).json()["rec_id"] for user in ("u1", "zz")]
    wait_until(lambda: {decode(Impression, v).rec_id for v in published(worker, "impressions")} >= set(rec_ids))
    impression = next(decode(Impression, v) for v in published(worker, "impressions")
                      if decode(Impression, v).rec_id == rec_ids[0])
    assert impression.user_id == "u1" and impression.model_version == "v0" and len(impression.items) == 4
    assert impression.items[0].explanation["style"] in ("history", "co_purchase", "similar_text", "popular")


def test_impression_failures_are_counted_not_served(base):
    worker = make_worker(base)
    worker.publisher.fail = ConnectionError("broker down")
    with TestClient(create_app(worker)) as client:
        assert client.get("/recommend", params={"user_id": "u1"}).status_code == 200
        wait_until(lambda: 'recloop_serving_impressions_total{outcome="failed"} 1.0' in client.get("/metrics").text)


# --------------------------------------------------------------------------- /feedback


def test_explanation_feedback_and_clicks_go_to_their_topics(client, worker):
    rec = client.get("/recommend", params={"user_id": "u2", "k": 1}).json()
    item = rec["items"][0]
    verdict = {"user_id": "u2", "rec_id": rec["rec_id"], "item_id": item["item_id"], "helpful": False,
               "explanation_id": item["explanation"]["explanation_id"], "style": item["explanation"]["style"],
               "reason": "I bought it as a gift"}
    response = client.post("/feedback", json=verdict)
    assert response.status_code == 202 and response.json()["accepted"] == "explanation"
    feedback = decode(ExplanationFeedback, published(worker, "explanation-feedback")[-1])
    assert (feedback.rec_id, feedback.helpful, feedback.event_id) == (rec["rec_id"], False, response.json()["event_id"])

    click = {"user_id": "u2", "item_id": item["item_id"], "type": "click", "rec_id": rec["rec_id"]}
    assert client.post("/feedback", json=click).status_code == 202
    assert decode(Interaction, published(worker, "interactions")[-1]).rec_id == rec["rec_id"]


VALID = b'{"user_id":"u1","rec_id":"r1","item_id":"i1","explanation_id":"e1","style":"history","helpful":true}'


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b"\xff\xfe\x00", 400),
    (b"", 400),
    (b"[1, 2]", 422),
    (b"{}", 422),
    (b'{"user_id":"u1","item_id":"i1","type":"purchase"}', 422),
    (VALID.replace(b'"history"', b'"because"'), 422),
    (VALID.replace(b"true", b'"yes"'), 422),
    (VALID.replace(b'"u1"', b'"' + b"u" * 200 + b'"'), 422),
    (VALID.replace(b"}", b',"ts":"yesterday"}'), 422),
    (VALID.replace(b"}", b',"pad":"' + b"x" * 70_000 + b'"}'), 413),
])
def test_malformed_or_oversized_feedback_is_a_4xx(client, body, status):
    response = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)


def test_feedback_that_cannot_be_delivered_is_a_503(base):
    worker = make_worker(base)
    worker.publisher.fail = ConnectionError("broker down")
    with TestClient(create_app(worker)) as client:
        assert client.post("/feedback", content=VALID).status_code == 503


# --------------------------------------------------------------------------- ops endpoints


def test_healthz_metrics_and_openapi(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["model_version"] == "v0" and health.json()["items"] == 43
    client.get("/recommend", params={"user_id": "u1"})
    text = client.get("/metrics").text
    for name in ("recloop_serving_request_seconds_bucket", "recloop_serving_swaps_total",
                 'recloop_serving_model_info{version="v0"}', "recloop_serving_rejected_updates"):
        assert name in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/feedback", "/healthz", "/metrics"} <= set(paths)


def test_missing_key_is_a_clear_start_up_error(base, monkeypatch):
    monkeypatch.delenv("RECLOOP_ADAPTER_KEY", raising=False)
    monkeypatch.delenv("RECLOOP_DEMO", raising=False)
    with pytest.raises(ServingConfigError, match="RECLOOP_ADAPTER_KEY"):
        ServingWorker(ServingSettings(), base)
    assert ServingSettings(demo=True).signing_key()


# --------------------------------------------------------------------------- adapter updates


def publishable(base, root, version: str, *, key: str = KEY, config: ModelConfig | None = None, texts=None,
                bias: float = 0.5) -> bytes:
    """An encoded AdapterUpdate whose head differs from version 0 by ``bias``."""
    model = RankingModel(base, config)
    if texts:
        model.set_catalogue(texts)
    with torch.no_grad():
        model.head.mlp[2].bias.fill_(bias)
    saved = artifacts.save_adapter(model, root, version, parent="v0", with_item_vectors=bool(texts))
    return encode(artifacts.make_update(saved, key))


def test_valid_updates_swap_and_bad_ones_are_refused_and_counted(base, tmp_path):
    worker = make_worker(base)
    texts = list(worker.live.snapshot().texts)
    good = publishable(base, tmp_path, "v1", texts=texts)
    outcome = asyncio.run(worker.updater.apply(good))
    assert outcome.accepted and worker.holder.current.version == "v1"
    assert worker.holder.current.source._encoder is None  # noqa: SLF001 - shipped vectors, nothing encoded

    update = decode(artifacts_update_type(), publishable(base, tmp_path, "v2"))
    flipped = bytearray(update.payload)
    flipped[-1] ^= 1
    bad = {
        "sha256": encode(dataclasses.replace(update, payload=bytes(flipped))),
        "signature": publishable(base, tmp_path, "v3", key="someone else's key"),
        "base_fingerprint": publishable(tiny_bert(seed=1), tmp_path, "v4"),
        "config": publishable(base, tmp_path, "v5", config=ModelConfig(lora_r=4)),
        "invalid_record": b'{"version": "v6"}',
    }
    for kind, raw in bad.items():
        outcome = asyncio.run(worker.updater.apply(raw))
        assert not outcome.accepted, kind
        assert worker.holder.current.version == "v1"
    with TestClient(create_app(worker)) as client:
        text = client.get("/metrics").text
        for kind in bad:
            assert f'recloop_serving_rejected_updates_total{{kind="{kind}"}} 1.0' in text
        assert client.get("/recommend", params={"user_id": "u1"}).json()["model_version"] == "v1"
        assert client.get("/healthz").json()["rejected_updates"] == len(bad)


def artifacts_update_type():
    from streams.records import AdapterUpdate

    return AdapterUpdate


def test_newest_valid_update_wins_and_repeats_are_not_rebuilt(base, tmp_path):
    worker = make_worker(base, ready=False)
    v1, v2 = publishable(base, tmp_path, "v1"), publishable(base, tmp_path, "v2", bias=0.7)
    forged = publishable(base, tmp_path, "v3", key="forger")
    outcome = asyncio.run(worker.updater.apply_newest([v1, None, v2, forged, None]))
    assert outcome.swap is not None and worker.holder.current.version == "v2"
    again = asyncio.run(worker.updater.apply_newest([v1, v2]))
    assert again.accepted and again.swap is None and worker.holder.current.version == "v2"


def test_boot_skips_another_bases_lineage_in_one_line_and_serves_this_bases_newest(base, tmp_path, caplog):
    """A MiniLM run's versions, then a run on this base numbered from 1 again: the new lineage is served."""
    other = tiny_bert(seed=1)
    earlier = [publishable(other, tmp_path / "other", f"v{n:06d}") for n in range(1, 6)]
    ours = [publishable(base, tmp_path, "v000001"), publishable(base, tmp_path, "v000002", bias=0.7)]
    worker = make_worker(base, ready=False)
    backlog = BootBacklog(base.fingerprint)
    backlog.extend([*earlier, None, *ours])
    with caplog.at_level(logging.INFO, logger="serving.updates"):
        outcome = asyncio.run(worker.updater.boot(backlog))
    assert outcome is not None and worker.holder.current.version == "v000002"
    assert worker.metrics.rejected_count == 0 and backlog.read == 8 and len(backlog.candidates) == 2
    skipped = [r.getMessage() for r in caplog.records if "another base" in r.getMessage()]
    assert skipped == [f"skipped 5 published update(s) trained on another base: 5 on base {other.fingerprint[:12]}… "
                       f"(v000001 … v000005); this worker's base is {base.fingerprint[:12]}… (a new lineage starts "
                       "here)"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_boot_with_only_another_bases_updates_serves_version_0(base, tmp_path):
    worker = make_worker(base, ready=False)
    backlog = BootBacklog(base.fingerprint)
    backlog.extend([publishable(tiny_bert(seed=1), tmp_path, "v000009")])
    assert asyncio.run(worker.updater.boot(backlog)) is None
    assert worker.holder.current.version == "v0" and worker.metrics.rejected_count == 0


def test_versions_strictly_increase_a_replayed_older_one_is_refused(base, tmp_path):
    """A replayed old record (validly signed) never rolls serving back; a rollback is a new, higher version."""
    worker = make_worker(base, ready=False)
    asyncio.run(worker.updater.apply(publishable(base, tmp_path / "old", "v000007")))
    replayed = asyncio.run(worker.updater.apply(publishable(base, tmp_path / "new", "v000001", bias=0.9)))
    assert not replayed.accepted and replayed.reason.startswith("not newer")
    assert worker.holder.current.version == "v000007" and worker.metrics.rejected_count == 1
    rollback = publishable(base, tmp_path / "back", "v000008-rollback-v000001", bias=0.9)
    assert asyncio.run(worker.updater.apply(rollback)).swap is not None
    assert worker.holder.current.version == "v000008-rollback-v000001"


def test_at_boot_the_highest_version_serves_not_the_last_published(base, tmp_path):
    worker = make_worker(base, ready=False)
    backlog = BootBacklog(base.fingerprint)
    backlog.extend([publishable(base, tmp_path / "a", "v000002"), publishable(base, tmp_path / "b", "v000003"),
                    publishable(base, tmp_path / "c", "v000001", bias=0.5)])  # an old record replayed last
    asyncio.run(worker.updater.boot(backlog))
    assert worker.holder.current.version == "v000003"


def test_the_boot_backlog_keeps_only_the_newest_candidates_of_this_base():
    backlog = BootBacklog("mine", size=2)
    backlog.extend(orjson.dumps({"version": f"v{n}", "base_fingerprint": "mine"}) for n in range(5))
    backlog.extend([b"unreadable"])  # kept: verification refuses it with its reason
    assert [orjson.loads(raw)["version"] for raw in list(backlog.candidates)[:1]] == ["v4"]
    assert backlog.candidates[-1] == b"unreadable" and backlog.skipped == 0


def test_new_catalogue_items_are_folded_into_the_serving_version(base):
    worker = make_worker(base)
    before = worker.holder.current
    worker.live.learn_item(Item(item_id="NEW1", title="GOLD STAR GARLAND"))
    swap = asyncio.run(worker.updater.refresh_catalogue())
    assert swap is not None and swap.previous is before
    assert worker.holder.current.n_items == before.n_items + 1 and worker.holder.current.version == before.version
    assert asyncio.run(worker.updater.refresh_catalogue()) is None  # nothing changed since
