"""``recloop eval --quick --tiny`` on the bundled data: the JSON contract, and recloop beating the baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.baskets import DEFAULT_DATA_PATH

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1500)  # ~6 min on a shared 2-core machine
def test_recloop_eval_quick_tiny_prints_the_json_and_recloop_ranks_best(tmp_path):
    if not DEFAULT_DATA_PATH.exists():
        pytest.skip("the bundled dataset is missing")
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "-m", "ops.cli", "eval", "--quick", "--tiny", "--no-ablations",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    models = result["models"]
    assert {"popularity", "repeat", "item_knn", "repeat_knn", "biased_mf", "frozen_base", "recloop",
            "recloop_text_only"} <= set(models)
    baskets = {metrics["baskets"] for metrics in models.values()}
    assert len(baskets) == 1 and baskets.pop() > 1000  # every 4th eligible basket, the same for every model
    for metrics in models.values():
        assert {"ndcg@10", "hr@10", "recall@10", "mrr", "discovery", "cold_items"} <= set(metrics)
    assert 0.0 < result["retention"]["recloop"] <= 1.0
    learner = result["learners"]["recloop"]
    assert learner["versions_served"] == learner["versions"] > 0 and learner["rejected_updates"] == 0
    assert (out / "eval.md").is_file() and (out / "eval.png").is_file()

    recloop = models["recloop"]["ndcg@10"]  # what serving would have served, version by version
    assert recloop >= models["repeat"]["ndcg@10"]
    # above every baseline; recloop's own views (other new-item stage settings, recloop_*) may be above or below
    assert recloop == max(m["ndcg@10"] for name, m in models.items() if not name.startswith("recloop_"))
