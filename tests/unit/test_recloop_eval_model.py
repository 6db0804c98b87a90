"""recloop's eval model: online learning in test-then-train order, versions, retention probe, and ``recloop eval``."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from learner.baselines import DAY
from learner.baskets import Basket
from learner.encoder import base_fingerprint
from learner.recloop_eval_model import (
    FeatureStore,
    FrozenBaseRecommender,
    FullFineTuneRecommender,
    RecloopConfig,
    RecloopRecommender,
)
from learner.rich_features import RICH_FEATURE_NAMES, RichFeatures
from ops.evaluate import EVAL_START, Protocol, prequential

N_ITEMS = 60
TEXTS = [f"{colour} {thing} {i}" for i, (colour, thing) in enumerate(
    (c, t) for c in ("RED", "BLUE", "WHITE", "PINK", "GREEN", "IVORY") for t in
    ("MUG", "CANDLE", "BAG", "LANTERN", "HEART", "CARD", "TIN", "BOX", "CLOCK", "BOWL"))]
#: small windows and early text steps, so a few hundred baskets exercise every path
SMALL = RecloopConfig(window_baskets=12, head_batch=4, text_every_windows=2, text_steps=1, text_batch=16,
                      min_items=5, probe_end=6 * DAY, probe_every=2, probe_size=10, head_reservoir=20)


def stream(n_days: int = 40, shoppers: int = 12, seed: int = 0) -> list[Basket]:
    """Shoppers who mostly rebuy their own staples and sometimes try a popular or a random item."""
    rng = np.random.default_rng(seed)
    staples = {f"u{s}": rng.choice(N_ITEMS, size=4, replace=False).tolist() for s in range(shoppers)}
    baskets = []
    for day in range(n_days):
        for user, own in staples.items():
            if rng.random() < 0.45:
                items = [i for i in own if rng.random() < 0.6] + [int(rng.integers(5)), int(rng.integers(N_ITEMS))]
                baskets.append(Basket(user, day * DAY + 3600.0 * (int(user[1:]) % 7), tuple(dict.fromkeys(items)),
                                      f"{user}-{day}"))
    return sorted(baskets, key=lambda b: (b.ts, b.user_id))


def run(models, baskets, start_day: float = 20):
    return prequential(models, baskets, Protocol(eval_start=start_day * DAY))


# --------------------------------------------------------------------------- features


def test_rich_rows_do_not_depend_on_which_candidates_are_scored():
    features = RichFeatures()
    for basket in stream(n_days=10):
        features.learn([basket])
    full = features.matrix("u1", np.arange(N_ITEMS))
    subset = np.array([7, 0, 33, 2])
    assert full.shape == (N_ITEMS, len(RICH_FEATURE_NAMES))
    np.testing.assert_allclose(features.matrix("u1", subset), full[subset])
    assert np.isfinite(full).all() and full.max() < 5.0


def test_store_serves_every_model_the_state_from_before_the_group():
    store = FeatureStore()
    first = stream(n_days=3)[:5]
    user = first[0].user_id
    second = [Basket(user, 10 * DAY, (1, 2), "x")]
    store.learn(first)
    before = store.before(second)
    store.learn(second)  # the first model let the store learn the group ...
    assert store.before(second) is before  # ... the next model still gets the state of before
    store.learn(second)  # learning twice is a no-op
    assert store.version == 2
    assert not np.array_equal(store.rows(user, before.n_items), before.rows[user])
    assert 2 not in before.history[user] or 2 in first[0].items
    assert store.history(user)[-2:] == (1, 2)


# --------------------------------------------------------------------------- recloop


def test_untrained_model_ranks_the_shoppers_own_items_first_like_repeat(base):
    model = RecloopRecommender(base, TEXTS, config=SMALL)
    model.learn([Basket("a", 0.0, (3, 9), "1")])
    model.learn([Basket("a", DAY, (9,), "2"), Basket("b", DAY, tuple(range(10, 20)), "3")])
    scores = model.score("a", np.arange(20))
    assert np.argsort(-scores)[:2].tolist() == [9, 3]  # bought twice, then once; the rest after
    assert model.version == 0 and model.head_steps == 0


def test_learns_online_publishes_versions_and_beats_its_start(base):
    baskets = stream()
    recloop = RecloopRecommender(base, TEXTS, config=SMALL)
    tallies, _ = run([recloop], baskets)
    report = recloop.report()
    assert report["versions"] >= 3 and report["head_steps"] > 0 and report["text_steps"] > 0
    assert report["versions"] + report["refused"] == report["windows"]
    assert report["probe_baskets"] > 0 and len(report["probe"]) >= 2
    assert 0.0 < report["retention"] <= 1.0 and 0.0 < report["retention_text"] <= 1.0
    assert tallies["recloop"].baskets > 50 and tallies["recloop"].summary(N_ITEMS)["ndcg@10"] > 0.3
    assert json.loads(json.dumps(report)) == report


def test_probe_baskets_are_held_out_of_training(base, monkeypatch):
    trained = []
    original = RecloopRecommender._train_head

    def spy(self, window):
        trained.extend(window)
        original(self, window)

    monkeypatch.setattr(RecloopRecommender, "_train_head", spy)
    recloop = RecloopRecommender(base, TEXTS, config=SMALL)
    run([recloop], stream(n_days=20))
    assert recloop.probe.baskets and trained
    assert not {id(h) for h in recloop.probe.baskets} & {id(h) for h in trained}


def test_lora_leaves_the_base_frozen_and_the_full_fine_tune_moves_it(base):
    store = FeatureStore()
    always = RecloopConfig(**{**SMALL.__dict__, "gate_tolerance": 1.0})  # no rollback undoes the text steps
    recloop = RecloopRecommender(base, TEXTS, config=always, store=store)
    full = FullFineTuneRecommender(base, TEXTS, config=always, store=store, item_vectors=recloop.model.item_vectors)
    run([recloop, full], stream(n_days=20))
    assert recloop.text_steps > 0 and full.text_steps == recloop.text_steps
    assert recloop.model.current_base_fingerprint() == base.fingerprint
    assert any(float(t.abs().sum()) > 0 for n, t in recloop.model.adapter_state().items() if "lora_B" in n)
    assert full.model.current_base_fingerprint() != base.fingerprint
    assert all(float(t.abs().sum()) == 0 for n, t in full.model.adapter_state().items() if "lora_B" in n)
    assert base_fingerprint(base.model) == base.fingerprint  # the shared base object itself never changes


def test_a_refused_window_rolls_back_to_the_accepted_weights(base):
    never = RecloopConfig(**{**SMALL.__dict__, "gate_tolerance": -1.0})  # the candidate must gain a whole NDCG
    recloop = RecloopRecommender(base, TEXTS, config=never)
    initial = recloop.trainer.snapshot()
    run([recloop], stream(n_days=15))
    assert recloop.windows > 0 and recloop.version == 0 and recloop.refused == recloop.windows
    assert all(torch.equal(initial[name], recloop._accepted[name]) for name in initial)


# --------------------------------------------------------------------------- frozen base


def test_frozen_base_is_the_cosine_to_the_mean_of_the_last_items():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    frozen = FrozenBaseRecommender(item_vectors=vectors, last_items=1)
    frozen.learn([Basket("a", 0.0, (1,), "1")])
    frozen.learn([Basket("a", DAY, (0,), "2")])  # only the newest item counts with last_items=1
    assert frozen.score("a", np.arange(4)).round(4).tolist() == [1.0, 0.0, 0.7071, -1.0]
    assert frozen.score("nobody", np.arange(4)).tolist() == [0.0] * 4


# --------------------------------------------------------------------------- recloop eval


def write_retail(path, baskets: list[Basket], start: dt.datetime) -> None:
    rows = [(b.invoice, f"{20000 + item}", TEXTS[item], 1, start + dt.timedelta(seconds=b.ts), float(b.user_id[1:]) + 1)
            for b in baskets for item in b.items]
    invoice, code, text, quantity, date, customer = zip(*rows, strict=True)
    pq.write_table(pa.table({"InvoiceNo": invoice, "StockCode": code, "Description": text, "Quantity": quantity,
                             "InvoiceDate": pa.array(date, pa.timestamp("us")), "CustomerID": customer}), path)


def test_run_full_eval_writes_the_report_and_the_json_shape(base, tmp_path, monkeypatch):
    from ops import eval_cli

    start = dt.datetime.fromtimestamp(EVAL_START, dt.UTC).replace(tzinfo=None) - dt.timedelta(days=30)
    write_retail(tmp_path / "retail.parquet", stream(n_days=36), start)
    monkeypatch.setattr(eval_cli, "tiny_bert", lambda seed: base)
    config = RecloopConfig(**{**SMALL.__dict__, "probe_end": EVAL_START - 24 * DAY})
    result = eval_cli.run_full_eval(quick=False, out_dir=tmp_path / "out", tiny=True,
                                    data_path=tmp_path / "retail.parquet", config=config, threads=None)
    assert json.loads(json.dumps(result)) == result
    names = {"popularity", "repeat", "item_knn", "repeat_knn", "biased_mf", "frozen_base", "recloop",
             "full_finetune"}
    assert set(result["models"]) == names
    for metrics in result["models"].values():
        assert list(metrics)[:4] == ["ndcg@10", "hr@10", "recall@10", "mrr"]
        assert all(0.0 <= metrics[m] <= 1.0 for m in ("ndcg@10", "hr@10", "recall@10", "mrr"))
    assert set(result["retention"]) == {"frozen_base", "recloop", "full_finetune"}
    assert all(0.0 < v <= 1.0 for v in result["retention"].values())
    assert result["base"]["tiny"] is True
    report = (tmp_path / "out" / "eval.md").read_text()
    assert "| recloop |" in report and "Retention" in report
    assert (tmp_path / "out" / "eval.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["retention"] == result["retention"]


def test_models_sharing_a_store_learn_the_same_whatever_their_order(base):
    """The second model reads the store after the first let it learn the group: it must see the same past."""
    store = FeatureStore()
    first = RecloopRecommender(base, TEXTS, config=SMALL, store=store, name="first")
    second = RecloopRecommender(base, TEXTS, config=SMALL, store=store, name="second",
                                item_vectors=first.model.item_vectors)
    tallies, n = run([first, second], stream(n_days=25))
    assert first.windows > 2 and first.head_steps > 0
    assert tallies["first"].summary(n)["ndcg@10"] == tallies["second"].summary(n)["ndcg@10"]
    assert first.probe.scores == second.probe.scores
    for (name, mine), theirs in zip(first.trainer.snapshot().items(), second.trainer.snapshot().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_a_base_anchor_pulls_the_encoder_toward_the_pretrained_weights_not_the_last_version(base):
    config = RecloopConfig(**{**SMALL.__dict__, "text_anchor": "base", "gate_tolerance": 1.0})
    recloop = RecloopRecommender(base, TEXTS, config=config)
    initial = recloop.trainer.snapshot()
    run([recloop], stream(n_days=20))
    assert recloop.version > 0 and recloop.text_steps > 0
    moved = sum(float(((p - initial[name]) ** 2).sum()) for name, p in recloop.trainer.snapshot().items())
    assert moved > 0 and float(recloop.trainer.anchor_penalty().detach()) == pytest.approx(moved, rel=1e-4)
