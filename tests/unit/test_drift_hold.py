"""A critical drift alarm on the item mix holds publishing: every window decided during the hold is refused with
the alarm as its reason and rolled back, and publishing resumes after it (learner/drift_hold.py)."""

from __future__ import annotations

import torch

from learner.drift_hold import DriftHold
from learner.gate import PublishGate, WindowMetrics
from streams.records import DriftAlarm
from tests.unit.test_learner_service import batches, make_service


def alarm(signal: str = "item", severity: str = "critical", ts: float = 1_000.0) -> DriftAlarm:
    return DriftAlarm(detector="page_hinkley", signal=signal, value=1.0, window=60, severity=severity, ts=ts)


def test_only_critical_item_mix_alarms_hold_and_a_later_one_extends_the_hold():
    hold = DriftHold(hold_s=100)
    assert not hold.observe(alarm(severity="warning")) and not hold.observe(alarm(signal="price"))
    assert hold.reason(now=1_000.0) is None
    assert hold.observe(alarm(ts=1_000.0)) and hold.reason(now=1_099.0)
    assert not hold.observe(alarm(ts=950.0))  # an older alarm read late changes nothing
    assert hold.observe(alarm(ts=1_050.0)) and hold.reason(now=1_149.0) and hold.reason(now=1_151.0) is None
    assert not DriftHold(hold_s=0).observe(alarm())  # 0: never hold


def test_the_gate_refuses_anything_while_held():
    gate = PublishGate(min_examples=1)
    better, serving = WindowMetrics(0.5, 0.9, 100), WindowMetrics(0.2, 0.8, 100)
    assert gate.decide(better, serving).publish
    decision = gate.decide(better, serving, hold="critical drift alarm on item")
    assert not decision.publish and decision.reason == "held: critical drift alarm on item"


def test_a_held_learner_publishes_nothing_and_keeps_the_served_weights(base, retail, tmp_path):
    free, held = make_service(base, tmp_path / "free"), make_service(base, tmp_path / "held")
    steps = batches(*retail)
    for batch in steps[:4]:  # the same history for both: both publish
        free.process(batch)
        held.process(batch)
    assert held.current_version is not None and held.current_version == free.current_version
    served = {name: p.clone() for name, p in held.ranker._accepted.items()}
    reason = "critical drift alarm on item (page_hinkley, 61 baskets)"
    outcomes = [held.process(batch, hold=reason) for batch in steps[4:]]
    decisions = [d for o in outcomes for d in o.decisions]
    assert decisions and all(not d.publish and d.reason == f"held: {reason}" for d in decisions)
    assert not any(o.updates for o in outcomes) and held.status_dict()["held"] == reason
    assert all(torch.equal(held.ranker._accepted[name], p) for name, p in served.items())
    free_outcomes = [free.process(batch) for batch in steps[4:]]
    assert any(o.updates for o in free_outcomes)  # the same windows, not held: published
    after = held.process(steps[-1][:50])
    assert held.status_dict()["held"] is None and after.status["held"] is None
