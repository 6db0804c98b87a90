"""The prequential harness: metrics, test-then-train order, eligibility, discovery and cold items, periods
derived from the data, and run_eval's outputs."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from learner.baselines import DAY, ItemKNNRecommender, PopularityRecommender, RepeatRecommender
from learner.baskets import DEFAULT_DATA_PATH, Basket
from learner.ranking_metrics import ndcg_at_k, recall_at_k
from ops import evaluate
from ops.evaluate import (
    METRICS,
    Catalogue,
    ModelTally,
    Protocol,
    default_models,
    prequential,
    ranking_order,
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


class Fixed:
    """Scores item ``i`` with ``scores[i]`` for everyone (higher items first)."""

    name = "fixed"

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.asarray(scores)

    def learn(self, baskets: list[Basket]) -> None:
        pass

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return self.scores[candidates]


def test_discovery_ranks_new_items_without_the_shoppers_past_and_skips_pure_repeats():
    stream = [basket("a", 0, 0, 1), basket("b", 0, 2, 3),
              basket("a", 1, 0, 2),  # 0 is a repeat, 2 is new to a
              basket("a", 2, 1)]     # all repeats: no discovery
    tallies, n_items = prequential([Fixed([4, 3, 2, 1])], stream, ALL_DAYS)
    summary = tallies["fixed"].summary(n_items)
    assert summary["baskets"] == 2 and summary["discovery"]["baskets"] == 1
    # among all items, 2 ranks third; without a's past items 0 and 1 it ranks first
    assert summary["discovery"] == {"ndcg@10": 1.0, "hr@10": 1.0, "baskets": 1}


def test_a_new_target_never_seen_counts_as_a_discovery_miss():
    tallies, n_items = prequential([Oracle(STREAM)], STREAM, ALL_DAYS)
    # a's day-1 {1, 3}: its only new target, 3, was never seen; b's {2, 0} and c's {1} each find the new item first
    assert tallies["oracle"].summary(n_items)["discovery"] == {"ndcg@10": round(2 / 3, 4), "hr@10": round(2 / 3, 4),
                                                               "baskets": 3}


def test_cold_items_are_targets_first_sold_shortly_before_the_basket():
    stream = [basket("a", 0, 0), basket("b", 0, 1), basket("b", 10, 2),  # 2 is new at day 10: not rankable yet
              basket("a", 12, 2, 0)]  # 2 was first sold 2 days before (cold), 0 twelve days before (not)
    tallies, n_items = prequential([Fixed([3, 2, 1])], stream, Protocol(eval_start=0.0, cold_item_days=5))
    summary = tallies["fixed"].summary(n_items)
    assert summary["baskets"] == 2
    assert summary["cold_items"] == {"ndcg@10": round(1 / math.log2(4), 4), "hr@10": 1.0, "baskets": 1}


def test_progress_counts_every_basket_and_the_default_protocol_comes_from_the_data():
    done = []
    tallies, _ = prequential([Constant()], STREAM, on_progress=done.append)
    assert sum(done) == len(STREAM) and len(done) == 3  # one call per timestamp group
    assert tallies["constant"].baskets == 3  # 91 days back from day 2 covers the whole stream


def write_retail(path, rows: list[tuple[float, int, str]], start: dt.datetime) -> None:
    """Online Retail rows of (day, customer, stock code), one invoice per row."""
    cells = [(f"{n}", code, 1, start + dt.timedelta(days=day), float(customer))
             for n, (day, customer, code) in enumerate(rows)]
    invoices, codes, quantities, dates, customers = zip(*cells, strict=True)
    pq.write_table(pa.table({"InvoiceNo": invoices, "StockCode": codes, "Description": codes,
                             "Quantity": quantities, "InvoiceDate": pa.array(dates, pa.timestamp("us")),
                             "CustomerID": customers}), path)


def test_run_eval_returns_json_and_writes_the_table(tmp_path, monkeypatch):
    plots = []
    monkeypatch.setattr(evaluate, "write_plot", lambda result, path: plots.append(path))  # tested on its own
    path = tmp_path / "retail.parquet"
    write_retail(path, [(-5, 1, "22423"), (-5, 2, "85123A"), (1, 1, "22423"), (1, 1, "85123A"), (2, 2, "85123A"),
                        (3, 3, "22423")], dt.datetime(2011, 9, 9))
    result = run_eval([RepeatRecommender(), PopularityRecommender()], quick=False, data_path=path,
                      out_dir=tmp_path / "out")
    assert json.loads(json.dumps(result)) == result
    assert set(result["models"]) == {"repeat", "popularity"}
    assert set(result["models"]["repeat"]) >= {*METRICS, "baskets", "discovery", "cold_items"}
    assert result["models"]["repeat"]["baskets"] == 2 and result["protocol"]["quick"] is False
    assert result["models"]["repeat"]["hr@10"] == 1.0
    assert result["protocol"]["source"] == "online_retail"
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "| repeat |" in table and "NDCG@10" in table and "Discovery NDCG@10" in table
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["models"] == result["models"]
    assert plots == [tmp_path / "out" / "eval.png"]
    assert set(result["weekly_ndcg@10"]["repeat"]) == {"2011-09-05"}  # Sat 10th and Sun 11th


# --------------------------------------------------------------------------- any shop's data


def generated_shop(seed: int = 3) -> tuple[list[dict], list[dict]]:
    """Ten months of a made-up 2023 shop in the contract's shapes: catalog items and interactions.

    Thirty shoppers rebuy their staples and try other items; new items keep arriving, and views and
    returns are mixed in (they are not purchases).
    """
    rng = np.random.default_rng(seed)
    start = dt.datetime(2023, 2, 14, 16, 45, 12, tzinfo=dt.UTC)
    items = [{"item_id": f"sku-{n:03d}", "title": f"Thing {n}", "category": ["garden", "kitchen"][n % 2],
              "schema_version": 1} for n in range(60)]
    staples = {f"shopper-{s:02d}": rng.choice(20, 3, replace=False) for s in range(30)}
    events = []
    for day in range(300):
        available = 20 + day * 40 // 300  # item 20 + k arrives over the year
        for shopper in rng.choice(sorted(staples), 2, replace=False):
            when = start + dt.timedelta(days=day, minutes=int(rng.integers(0, 600)))
            bought = {int(i) for i in rng.choice(staples[shopper], 2, replace=False)}
            bought.add(int(rng.integers(0, available)))
            for item in sorted(bought):
                events.append({"event_id": f"ev-{len(events)}", "user_id": str(shopper), "item_id": f"sku-{item:03d}",
                               "type": "purchase", "ts": when.isoformat(), "session_id": f"order-{day}-{shopper}"})
            events.append({"event_id": f"ev-{len(events)}", "user_id": str(shopper), "item_id": "sku-059",
                           "type": ["view", "return"][day % 2], "ts": when.isoformat()})
    return items, events


def write_shop(path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    else:
        keys = sorted({key for row in rows for key in row})
        pq.write_table(pa.table({key: [row.get(key) for row in rows] for key in keys}), path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_the_protocol_runs_on_any_shops_records_with_periods_from_its_data(tmp_path, suffix):
    items, events = generated_shop()
    path = tmp_path / f"shop{suffix}"
    write_shop(path, events + items)  # catalog rows may come anywhere in the file
    result = run_eval([RepeatRecommender(), PopularityRecommender(), ItemKNNRecommender()], quick=False,
                      data_path=path)
    purchases = [e for e in events if e["type"] == "purchase"]
    first = dt.datetime.fromisoformat(purchases[0]["ts"])
    last = dt.datetime.fromisoformat(purchases[-1]["ts"])
    midnight = dict(hour=0, minute=0, second=0, microsecond=0)
    protocol = result["protocol"]
    assert protocol["eval_start_utc"] == (last - dt.timedelta(days=91)).replace(**midnight).isoformat()
    assert protocol["probe_end_utc"] == (first + dt.timedelta(days=31)).replace(**midnight).isoformat()
    assert protocol["eval_start_utc"].startswith("2023-09") and protocol["probe_end_utc"] == "2023-03-17T00:00:00+00:00"
    assert protocol["source"] == "records" and protocol["items"] == len({e["item_id"] for e in purchases})
    # every basket of the test period is scored (all 30 shoppers have bought before by then)
    eval_start = dt.datetime.fromisoformat(protocol["eval_start_utc"])
    in_test = {e["session_id"] for e in purchases if dt.datetime.fromisoformat(e["ts"]) >= eval_start}
    for name, metrics in result["models"].items():
        assert metrics["baskets"] == len(in_test), name
        assert 0 < metrics["discovery"]["baskets"] <= metrics["baskets"]
        assert 0 < metrics["cold_items"]["baskets"] < metrics["baskets"]
    assert result["models"]["repeat"]["ndcg@10"] > result["models"]["popularity"]["ndcg@10"]
    assert set(result["weekly_ndcg@10"]["repeat"]) <= {f"2023-{m:02d}-{d:02d}" for m in range(9, 13)
                                                      for d in range(1, 32)}


def test_recloop_eval_baselines_only_prints_clean_json_for_a_records_file(tmp_path):
    from ops.cli import app

    items, events = generated_shop()
    path = tmp_path / "shop.jsonl"
    write_shop(path, items + events[: len(events) // 2])
    run = CliRunner().invoke(app, ["eval", "--baselines-only", "--quick", "--data", str(path),
                                   "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)  # stdout is the JSON and nothing else: no progress bar on a pipe
    assert [name for name in result["models"]] == [m.name for m in default_models()]
    assert result["protocol"]["quick"] is True and result["protocol"]["eval_start_utc"].startswith("2023-")
    assert (tmp_path / "out" / "eval.md").read_text().startswith("# Offline evaluation (quick protocol")


def test_recloop_eval_refuses_a_file_without_purchases(tmp_path):
    from ops.cli import app

    path = tmp_path / "views.jsonl"
    write_shop(path, [e for e in generated_shop()[1] if e["type"] == "view"][:5])
    run = CliRunner().invoke(app, ["eval", "--baselines-only", "--data", str(path), "--out", str(tmp_path)])
    assert run.exit_code == 1 and "no purchases" in run.output


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


def test_every_model_reports_accuracy_precision_recall_and_f1_of_purchase_prediction():
    tallies, n_items = prequential([Oracle(STREAM), Constant()], STREAM, ALL_DAYS)
    for name, tally in tallies.items():
        figures = tally.summary(n_items)["classification"]
        assert {"accuracy", "precision", "recall", "f1", "examples"} <= set(figures), name
        assert 0.0 <= figures["accuracy"] <= 1.0 and figures["examples"] > 0


def test_classification_learns_that_high_scores_are_bought():
    from ops.evaluate import ClassificationTally

    tally = ClassificationTally(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(400):
        scores = rng.random(40)
        targets = np.array([int(rng.integers(40))])
        scores[targets] += 2.0  # the bought item always scores highest
        tally.add(scores, targets)
    figures = tally.summary()
    assert figures["accuracy"] > 0.9 and figures["recall"] > 0.8 and figures["precision"] > 0.8
