"""The publish gate's rule: improvements and small noise pass, regressions and NaN are refused.

The whole path (a sabotaged candidate refused, the weights rolled back) is tested through the learner
service in ``test_learner_service.py``; the window metrics in ``test_ranker.py``.
"""

from __future__ import annotations

import math

from learner.gate import PublishGate, WindowMetrics


def test_gate_needs_a_large_enough_window():
    decision = PublishGate(min_examples=50).decide(WindowMetrics(0.9, 0.9, 10), WindowMetrics(0.1, 0.1, 10))
    assert not decision.publish and "fewer than 50" in decision.reason


def test_gate_tolerates_small_noise_and_refuses_nan():
    gate = PublishGate(tolerance=0.01, min_examples=1)
    assert gate.decide(WindowMetrics(0.295, 0.7, 100), WindowMetrics(0.30, 0.7, 100)).publish
    assert not gate.decide(WindowMetrics(math.nan, 0.7, 100), WindowMetrics(0.30, 0.7, 100)).publish
    auc_gate = PublishGate(metric="auc", min_examples=1)
    assert not auc_gate.decide(WindowMetrics(0.9, 0.6, 100), WindowMetrics(0.1, 0.7, 100)).publish
