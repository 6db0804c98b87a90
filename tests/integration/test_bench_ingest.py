"""``recloop bench ingest`` as the README runs it, from a clean shell (no adapter key: the benchmark's own worker
uses the demo key), with and without the learner: small, to check the benchmark works, not the figures."""

from __future__ import annotations

import pytest

from ops.bench_ingest import run_bench_ingest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("learner", [False, True])
def test_bench_ingest_reports_the_worker_rate_and_the_learners_delay(kafka_settings, monkeypatch, learner):
    for name in ("RECLOOP_ADAPTER_KEY", "RECLOOP_ADAPTER_KEY_FILE", "RECLOOP_DEMO", "RECLOOP_LEARNER"):
        monkeypatch.delenv(name, raising=False)
    result = run_bench_ingest(kafka_settings, events=2000, learner=learner)
    assert result["events"] > 1000 and result["worker_events_per_s"] > 0 and result["raw_events_per_s"] > 0
    if learner:
        assert result["learner"] == "on (tiny encoder)"
        assert result["learner_behind_s"] is not None, "the learner did not receive every event"
    else:
        assert "learner" not in result
