"""The prequential harness: metrics, test-then-train order, eligibility, and run_eval's outputs."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learner.baselines import DAY, PopularityRecommender, RepeatRecommender
from learner.baskets import DEFAULT_DATA_PATH, Basket
from ops import evaluate
from ops.evaluate import (
    EVAL_START,
    METRICS,
    Catalogue,
    ModelTally,
    Protocol,
    default_models,
    ndcg_at_k,
    prequential,
    ranking_order,
    recall_at_k,
    run_eval,
    write_plot,
)

#: Figures of an independent implementation of this protocol on the full file (5,610 baskets).
REFERENCE_NDCG = {"repeat": 0.265, "popularity": 0.103}


def basket(user: str, day: float, *items: int) -> Basket:
    return Basket(user, day * DAY, tuple(items), f"{user}-{day}")


STREAM = [basket("a", 0, 0, 1), basket("b", 0, 1, 2),
          basket("a", 1, 1, 3), basket("c", 1, 0),   # c is new: not evaluated; item 3 is new for a
          basket("b", 2, 2, 0), basket("c", 2, 1)]
ALL_DAYS = Protocol(eval_start=0.0)


class Spy:
    """Records every call the harness makes, and what it was allowed to see."""

    name = "spy"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def learn(self, baskets: list[Basket]) -> None:
        self.calls.append(("learn", baskets[0].ts / DAY, len(baskets)))

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        self.calls.append(("score", user_id, candidates.tolist()))
        return np.zeros(len(candidates))


class Oracle:
    """Knows each shopper's next basket: scores exactly its items (an upper bound for the metrics)."""

    name = "oracle"

    def __init__(self, stream: list[Basket]) -> None:
        self.upcoming = {b.user_id: [] for b in stream}
        for b in stream:
            self.upcoming[b.user_id].append(b)

    def learn(self, baskets: list[Basket]) -> None:
        for b in baskets:
            self.upcoming[b.user_id].pop(0)

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return np.isin(candidates, self.upcoming[user_id][0].items).astype(float)


class Constant:
    name = "constant"

    def learn(self, baskets: list[Basket]) -> None:
        pass

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return np.zeros(len(candidates))


# --------------------------------------------------------------------------- metrics


def test_ndcg_and_recall_are_normalised_by_at_most_ten_targets():
    twenty_targets, perfect_top10 = 20, np.arange(10)
    assert ndcg_at_k(perfect_top10, twenty_targets, k=10) == pytest.approx(1.0)
    assert recall_at_k(perfect_top10, twenty_targets, k=10) == 1.0
    assert ndcg_at_k(np.array([], dtype=int), 3, k=10) == 0.0


def test_ranking_breaks_ties_by_popularity_then_by_older_item():
    scores = np.array([0.0, 1.0, 0.0, 0.0])
    popularity = np.array([3.0, 0.0, 3.0, 9.0])
    assert ranking_order(scores, popularity).tolist() == [1, 3, 0, 2]


def test_catalogue_positions_skip_unseen_items():
    catalogue = Catalogue()
    catalogue.learn([basket("a", 0, 4, 1), basket("b", 0, 7)])
    assert catalogue.candidates.tolist() == [1, 4, 7]
    assert catalogue.positions((7, 2, 1, 9)).tolist() == [2, 0]


def test_tally_counts_unrankable_targets_as_misses():
    tally = ModelTally()
    tally.add(np.array([0]), n_targets=2, top_k=np.array([5, 6]))  # one of two targets was never seen before
    summary = tally.summary(n_items=4)
    assert summary["hr@10"] == 1.0 and summary["recall@10"] == 0.5 and summary["mrr"] == 1.0
    assert summary["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-4)
    assert summary["coverage@10"] == 0.5 and summary["baskets"] == 1


# --------------------------------------------------------------------------- the prequential loop


def test_each_group_is_scored_on_earlier_state_then_learned():
    spy = Spy()
    prequential([spy], STREAM, ALL_DAYS)
    assert spy.calls == [
        ("learn", 0, 2),
        ("score", "a", [0, 1, 2]),          # c's first basket is not scored; item 3 is not a candidate yet
        ("learn", 1, 2),
        ("score", "b", [0, 1, 2, 3]), ("score", "c", [0, 1, 2, 3]),
        ("learn", 2, 2),
    ]


def test_only_baskets_from_eval_start_are_scored_and_every_nth_thins_them():
    spy = Spy()
    prequential([spy], STREAM, Protocol(eval_start=2 * DAY))
    assert [call[1] for call in spy.calls if call[0] == "score"] == ["b", "c"]
    spy = Spy()
    tallies, _ = prequential([spy], STREAM, Protocol(eval_start=0.0, every_nth=2))
    assert [call[1] for call in spy.calls if call[0] == "score"] == ["a", "c"]
    assert tallies["spy"].baskets == 2


def test_eval_end_is_exclusive():
    tallies, _ = prequential([Constant()], STREAM, Protocol(eval_start=0.0, eval_end=2 * DAY))
    assert tallies["constant"].baskets == 1


def test_oracle_is_perfect_except_for_never_seen_items():
    tallies, n_items = prequential([Oracle(STREAM)], STREAM, ALL_DAYS)
    summary = tallies["oracle"].summary(n_items)
    # a's day-1 basket {1, 3}: 3 was never seen, so half the targets are unrankable; b and c are perfect
    assert summary["hr@10"] == 1.0 and summary["mrr"] == 1.0
    assert summary["recall@10"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)
    assert n_items == 4


def test_a_model_without_opinion_ranks_like_popularity():
    stream = [basket(f"u{i % 7}", day / 10, *np.random.default_rng(day).choice(12, 3, replace=False).tolist())
              for i, day in enumerate(range(60))]
    tallies, n_items = prequential([Constant(), PopularityRecommender()], stream, ALL_DAYS)
    constant, popularity = (tallies[name].summary(n_items) for name in ("constant", "popularity"))
    assert {m: constant[m] for m in METRICS} == {m: popularity[m] for m in METRICS}


def test_models_must_have_unique_names_and_score_every_candidate():
    with pytest.raises(ValueError, match="unique"):
        prequential([Constant(), Constant()], STREAM, ALL_DAYS)

    class Short(Constant):
        def score(self, user_id, candidates):
            return np.zeros(1)

    with pytest.raises(ValueError, match="constant returned"):
        prequential([Short()], STREAM, ALL_DAYS)


def test_default_models_are_the_five_baselines():
    assert [m.name for m in default_models()] == ["popularity", "repeat", "item_knn", "repeat_knn", "biased_mf"]


def test_run_eval_returns_json_and_writes_the_table(tmp_path, monkeypatch):
    plots = []
    monkeypatch.setattr(evaluate, "write_plot", lambda result, path: plots.append(path))  # tested on its own
    start = dt.datetime.fromtimestamp(EVAL_START, dt.UTC).replace(tzinfo=None)
    rows = [(f"{n}", code, 1, start + dt.timedelta(days=day), float(customer))
            for n, (day, customer, code) in enumerate([(-5, 1, "22423"), (-5, 2, "85123A"), (1, 1, "22423"),
                                                       (1, 1, "85123A"), (2, 2, "85123A"), (3, 3, "22423")])]
    invoices, codes, quantities, dates, customers = zip(*rows, strict=True)
    path = tmp_path / "retail.parquet"
    pq.write_table(pa.table({"InvoiceNo": invoices, "StockCode": codes, "Description": codes,
                             "Quantity": quantities, "InvoiceDate": pa.array(dates, pa.timestamp("us")),
                             "CustomerID": customers}), path)
    result = run_eval([RepeatRecommender(), PopularityRecommender()], quick=False, data_path=path,
                      out_dir=tmp_path / "out")
    assert json.loads(json.dumps(result)) == result
    assert set(result["models"]) == {"repeat", "popularity"}
    assert set(result["models"]["repeat"]) >= {*METRICS, "baskets"}
    assert result["models"]["repeat"]["baskets"] == 2 and result["protocol"]["quick"] is False
    assert result["models"]["repeat"]["hr@10"] == 1.0
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "| repeat |" in table and "NDCG@10" in table
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["models"] == result["models"]
    assert plots == [tmp_path / "out" / "eval.png"]
    assert set(result["weekly_ndcg@10"]["repeat"]) == {"2011-09-05"}  # Sat 10th and Sun 11th


def test_write_plot_makes_a_png(tmp_path):
    model = {"ndcg@10": 0.2, "hr@10": 0.6, "recall@10": 0.2, "mrr": 0.4, "coverage@10": 0.5, "baskets": 3}
    result = {"models": {"a": model, "b": model}, "protocol": {"quick": True}, "seconds": 1.0,
              "weekly_ndcg@10": {"a": {"2011-09-05": 0.1, "2011-09-12": 0.3}, "b": {"2011-09-12": 0.2}}}
    write_plot(result, tmp_path / "eval.png")
    assert (tmp_path / "eval.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_quick_protocol_on_the_real_file_matches_the_reference():
    if not DEFAULT_DATA_PATH.exists():
        pytest.skip("the bundled dataset is missing")
    result = run_eval([RepeatRecommender(), PopularityRecommender()], quick=True, data_path=DEFAULT_DATA_PATH,
                      out_dir=None)
    assert result["models"]["repeat"]["baskets"] == 1403  # every 4th of the 5,610 eligible baskets
    for name, reference in REFERENCE_NDCG.items():
        assert result["models"][name]["ndcg@10"] == pytest.approx(reference, rel=0.05), name
