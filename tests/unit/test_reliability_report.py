"""Calibration from the online metrics to the report: ECE and a reliability diagram (issue 11, deliverable 3)."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from learner.online_metrics import PrequentialEvaluator
from ops.monitor import OpsState, render
from ops.report import write_report

T0 = 1.7e9


def calibrated_evaluator() -> PrequentialEvaluator:
    """Labels drawn with exactly the predicted probability: a well-calibrated stream."""
    evaluator = PrequentialEvaluator(window=5000)
    rng = np.random.default_rng(0)
    for probability in rng.random(5000):
        evaluator.update_label("impressions", bool(rng.random() < probability), float(probability))
    return evaluator


def test_a_calibrated_stream_has_a_small_ece_and_a_diagonal_diagram():
    snapshots = {(s.name, s.labels.get("bin")): s.value for s in calibrated_evaluator().snapshot(T0)}
    assert snapshots[("calibration_ece", None)] < 0.03
    bins = sorted(b for name, b in snapshots if name == "calibration_observed")
    assert len(bins) == 10
    for b in bins:
        assert abs(snapshots[("calibration_observed", b)] - snapshots[("calibration_predicted", b)]) < 0.06


def test_the_report_draws_the_reliability_diagram_and_the_monitor_lists_only_the_ece(tmp_path):
    state = OpsState()
    for snapshot in calibrated_evaluator().snapshot(T0):
        state.add_metric(snapshot)
    result = write_report(state, tmp_path)
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reliability.png" in [p.name for p in result.images]
    screen = io.StringIO()
    Console(file=screen, width=200).print(render(state, counts=None, lag=None, title="t", now=T0 + 1))
    assert "calibration_ece" in screen.getvalue() and "calibration_observed" not in screen.getvalue()
