"""``recloop eval --live --tiny`` on a small slice of the bundled data: the real loop (broker, worker with its
learner, a serving worker), the JSON contract, and live against offline on the same baskets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from learner.baskets import DEFAULT_DATA_PATH

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASKETS = 60
#: Live NDCG@10 may differ from offline by this much on this run. 60 baskets, per-basket NDCG@10 between 0 and 1
#: (sd ~0.2): live serves each version up to a timestamp group later than offline (a basket is closed by the next
#: event, then the version must reach the serving worker), and with a 20-basket window over ~4 windows one gate
#: decision that goes the other way changes which version serves a third of the baskets. Measured: -0.006 with
#: events delivered in order (RECLOOP_PARTITIONS=1); with 4 partitions -0.029 while baskets were split into
#: fragments; -0.006 and +0.003 (two runs) since they are closed per partition (learner/features.py, "Basket assembly").
NDCG_BOUND = 0.05


@pytest.mark.timeout(600)  # ~2 min on a shared 2-core machine
def test_eval_live_tiny_serves_the_loop_and_matches_offline(kafka_bootstrap, tmp_path):
    if not DEFAULT_DATA_PATH.exists():
        pytest.skip("the bundled dataset is missing")
    env = {k: v for k, v in os.environ.items() if k not in ("RECLOOP_DEMO", "RECLOOP_ADAPTER_KEY")}
    env["RECLOOP_KAFKA_BOOTSTRAP"] = kafka_bootstrap
    # 3 days of history (4.7k events) and the first 60 baskets of the test period (9k events); a decision every
    # 20 held-out baskets, since the slice holds only ~80 baskets of returning shoppers (the default is 200)
    done = subprocess.run([sys.executable, "-m", "ops.cli", "eval", "--live", "--tiny", "--quiet",
                           "--limit-baskets", str(BASKETS), "--history-days", "3", "--window-baskets", "20",
                           "--out", str(tmp_path / "eval")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads((tmp_path / "eval" / "eval_live.json").read_text())["live"] == result["live"]

    assert {"live", "offline", "repeat", "versions_served", "learner_lag", "seconds"} <= set(result)
    assert {"ndcg@10", "hr@10", "baskets"} <= set(result["live"])
    assert result["live"]["baskets"] == result["offline"]["baskets"] == result["repeat"]["baskets"] == BASKETS
    assert result["versions_served"] >= 1
    assert any(version != "v0" for version in result["setup"]["versions"])  # a published adapter was served
    lag = result["learner_lag"]
    assert lag["keep_up_timeouts"] == 0 and lag["request_errors"] == 0
    assert lag["learner_behind_at_ask"]["max"] == 0  # keep-up pace: asked only once the learner had everything
    assert lag["learner_events"] >= lag["events_produced"]
    assert abs(result["live"]["ndcg@10"] - result["offline"]["ndcg@10"]) <= NDCG_BOUND, result

    # Baskets are closed per partition, so the interleaved partitions split none: the learner holds out at most the
    # baskets offline holds out (measured: 68 and 69 of 83; 417 of 83 while fragments were held out). It may hold out
    # fewer: in the fast history replay catalogue records (another topic, another agent) can reach the learner
    # after the interactions that sell them, and a basket is held out only over catalogued items. The same stream
    # through LearnerService with partitions interleaved record by record, or 500 records at a time, holds out 80
    # to 83 baskets by the last request; with every history catalogue record after the history's interactions, 61.
    assert lag["held_out_baskets"] <= result["offline"]["held_out_baskets"], result
