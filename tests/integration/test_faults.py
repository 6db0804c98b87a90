"""``recloop bench faults --quick`` as a test, against the real broker: worker kills with the learner on, forged
adapters, a serving worker killed mid-swap, fuzzing. The figures are the benchmark's;
the test asserts only what must hold exactly (nothing lost or trained twice, nothing forged served, no serving
error), never a time."""

from __future__ import annotations

import pytest

from ops.bench_faults import run_bench_faults

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_faults_lose_nothing_serve_nothing_forged_and_never_fail_a_request(kafka_settings):
    # without the broker restart: the suite's broker holds every test's topics and takes minutes to start again
    result = run_bench_faults(kafka_settings, quick=True, seed=7)
    assert result["kills"] == 2 and len(result["restart_ready_s"]) == 2
    assert result["lost"] == 0 and result["duplicates_trained"] == 0, result
    assert result["versions"] > 0 and result["versions_strictly_increasing"]
    assert result["forged_rejected"] == result["forged_total"] == 7 and result["version_kept"]
    swap = result["serving_kill_during_swap"]
    assert swap["restarted_serves_newest"] and swap["survivor_errors"] == 0
    assert result["serving_requests"] > 0 and result["serving_errors"] == 0, result["serving_error_examples"]
    assert result["fuzz_cases"] > 0 and result["fuzz_5xx"] == result["fuzz_crashes"] == 0
    assert result["fuzz_schema_violations"] == 0, result["fuzz_failures"]
    assert result["fuzz_record_crashes"] == result["fuzz_record_violations"] == 0
