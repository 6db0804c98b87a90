"""Durable monitoring: a monitor restored from its checkpoint continues exactly where it stopped."""

from __future__ import annotations

import asyncio
import pickle
import random
import zlib

import pytest

from learner.online_metrics import FeatureScorer, OnlineMonitor, PrequentialEvaluator
from streams.ingest import SourcePosition
from streams.monitor_state import AppliedOffsets, CheckpointedMonitor, MonitorCheckpoint
from streams.monitoring import MonitoringSettings, restore_or_build_monitor
from streams.records import ExplanationFeedback, Impression, Interaction, Item, RecommendedItem
from streams.settings import JoinSettings

T0 = 1.7e9
STYLES = ("history", "popular", "similar")


def stream(seed: int = 3) -> list[tuple[str, object, SourcePosition]]:
    """A shop's records with their positions: a catalogue, 400 baskets (newcomers and pricier ones in the
    second half, so detectors alarm), impressions answered by clicks, explanation feedback."""
    rng = random.Random(seed)
    offsets: dict[tuple[str, int], int] = {}
    out: list[tuple[str, object, SourcePosition]] = []

    def add(kind: str, topic: str, partition: int, record: object) -> None:
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        out.append((kind, record, SourcePosition(topic, partition, offset)))

    for i in range(60):
        add("item", "t.catalog", i % 2, Item(f"item-{i}", f"thing {i}", category=f"cat-{i % 4}", price=1.0 + i % 7))
    for b in range(400):
        user = f"regular-{b % 25}" if b < 200 else f"newcomer-{b}"
        ts = T0 + 3600 * b
        partition = zlib.crc32(user.encode()) % 2
        for line in range(rng.randint(1, 4)):
            item = f"item-{rng.randrange(30) if b < 200 else 30 + rng.randrange(30)}"
            add("interaction", "t.interactions", partition,
                Interaction(f"ev-{b}-{line}", user, item, "purchase", ts, price=(2.0 if b < 200 else 9.0) + line))
        if b % 5 == 0:
            rec_id = f"rec-{b}"
            items = tuple(RecommendedItem(f"item-{(b + k) % 60}", rng.random(), {"style": STYLES[k % 3]})
                          for k in range(5))
            add("impression", "t.impressions", 0, Impression(rec_id, user, ts + 1, "v1", items))
            add("interaction", "t.interactions", partition,
                Interaction(f"click-{b}", user, items[1].item_id, "click", ts + 60, rec_id=rec_id))
            add("feedback", "t.feedback", 0,
                ExplanationFeedback(f"fb-{b}", user, rec_id, items[1].item_id, f"x-{b}", STYLES[b % 3],
                                    rng.random() < 0.3 + 0.2 * (b % 3), T0 + 3600 * b + 90))
    return out


def new_monitor() -> OnlineMonitor:
    return OnlineMonitor(PrequentialEvaluator(rank_every=1), clock=lambda: T0, warmup_baskets=0)


def feed(state: CheckpointedMonitor, records) -> list:
    alarms = []
    for kind, record, position in records:
        alarms += getattr(state, kind)(record, position)
    return alarms


def drift_state(monitor: OnlineMonitor) -> dict:
    """Every detector's full state (pickled) and what grading its alarms reads."""
    return {name: (w.n, list(w.values), w.quiet_until, pickle.dumps(w.detector))
            for name, w in monitor.drift._watched.items()}


def bandit_state(monitor: OnlineMonitor) -> dict:
    bandit = monitor.bandit
    return {segment: (bandit.rates(segment), bandit.votes(segment)) for segment in bandit.segments}


def test_a_restored_monitor_equals_one_that_ran_without_interruption(tmp_path):
    records = stream()
    uninterrupted = CheckpointedMonitor(new_monitor())
    expected_alarms = feed(uninterrupted, records)
    assert expected_alarms, "the stream should make the detectors alarm"

    cut, redelivered_from = 1200, 1000
    first = CheckpointedMonitor(new_monitor())
    alarms = feed(first, records[:cut])
    checkpoint = MonitorCheckpoint(tmp_path / "monitor.pickle", fingerprint="f")
    assert checkpoint.save(first) > 0 and not first.changed
    del first  # the process is gone

    restored = checkpoint.load(clock=lambda: T0)
    assert restored is not None and restored.applied.offsets
    alarms += feed(restored, records[redelivered_from:])  # Kafka redelivers from an older committed offset

    assert restored.skipped == cut - redelivered_from
    assert alarms == expected_alarms
    a, b = restored.monitor, uninterrupted.monitor
    assert a.snapshot(T0) == b.snapshot(T0)
    assert bandit_state(a) == bandit_state(b) and len(bandit_state(a)) >= 2
    assert drift_state(a) == drift_state(b)
    assert a.bandit.predict_one("new") == b.bandit.predict_one("new")  # the posterior draws continue too
    assert restored.applied == uninterrupted.applied
    names = {s.name for s in a.snapshot(T0)}
    assert {"ctr", "explanation_style_rate", "baseline.hr_at_10", "served.ndcg_at_10"} <= names


def test_records_without_a_position_are_always_applied():
    state = CheckpointedMonitor(new_monitor())
    purchase = Interaction("e1", "u", "i", "purchase", T0)
    state.interaction(purchase, None)
    state.interaction(purchase, None)
    assert state.skipped == 0 and state.monitor.evaluator.purchases_evaluated == 2 and state.changed


def test_offsets_are_kept_per_topic_and_partition():
    applied = AppliedOffsets()
    applied.record(SourcePosition("a", 0, 5))
    applied.record(SourcePosition("a", 0, 3))  # never moves back
    assert applied.offsets == {("a", 0): 5}
    assert not applied.covers(SourcePosition("a", 1, 0)) and not applied.covers(SourcePosition("b", 0, 5))


def test_the_checkpoint_is_replaced_atomically_and_leaves_no_temporary_file(tmp_path):
    state = CheckpointedMonitor(new_monitor())
    feed(state, stream()[:100])
    checkpoint = MonitorCheckpoint(tmp_path / "w" / "monitor.pickle", fingerprint="f")
    checkpoint.save(state)
    feed(state, stream()[100:200])
    checkpoint.save(state)
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["monitor.pickle"]
    assert checkpoint.load().applied == state.applied


def test_no_checkpoint_means_a_cold_start(tmp_path):
    assert MonitorCheckpoint(tmp_path / "monitor.pickle", fingerprint="f").load() is None


@pytest.mark.parametrize("why", ["other settings", "unreadable", "other format"])
def test_a_checkpoint_that_cannot_be_continued_is_set_aside(tmp_path, why, caplog):
    path = tmp_path / "monitor.pickle"
    state = CheckpointedMonitor(new_monitor())
    feed(state, stream()[:50])
    if why == "other settings":
        MonitorCheckpoint(path, fingerprint="window=1000").save(state)
    elif why == "unreadable":
        path.write_bytes(b"\x80\x05not a pickle")
    else:
        path.write_bytes(pickle.dumps({"format": 0}))
    assert MonitorCheckpoint(path, fingerprint="window=500").load() is None
    assert not path.exists() and (tmp_path / "monitor.pickle.old").exists()
    assert "monitoring starts cold" in caplog.text


def test_the_clock_is_not_part_of_the_state(tmp_path):
    state = CheckpointedMonitor(new_monitor())  # a lambda clock: not picklable, and not saved
    checkpoint = MonitorCheckpoint(tmp_path / "monitor.pickle", fingerprint="f")
    checkpoint.save(state)
    assert checkpoint.load(clock=lambda: 42.0).monitor.clock() == 42.0


def test_a_failed_save_is_logged_and_retried_and_never_raises(tmp_path, caplog):
    state = CheckpointedMonitor(new_monitor())
    feed(state, stream()[:50])
    checkpoint = MonitorCheckpoint(tmp_path / "monitor.pickle", fingerprint="f")
    state.monitor.unpicklable = lambda: None  # e.g. a component that keeps a lambda
    assert asyncio.run(checkpoint.save_async(state, "interval")) is False
    assert state.changed and checkpoint.failures == 1 and not (tmp_path / "monitor.pickle").exists()
    assert "monitor checkpoint (interval) failed (1 so far)" in caplog.text and "Traceback" in caplog.text
    del state.monitor.unpicklable
    assert asyncio.run(checkpoint.save_async(state, "interval")) is True and not state.changed
    assert asyncio.run(checkpoint.save_async(state, "shutdown")) is True  # nothing changed: nothing written
    assert checkpoint.load().applied == state.applied


def test_the_workers_monitor_is_restored_with_its_settings_or_starts_cold(tmp_path):
    settings, join = MonitoringSettings(rank_every=1, warmup_baskets=0), JoinSettings()
    state, checkpoint = restore_or_build_monitor(tmp_path, settings, join)
    assert state.monitor.evaluator.purchases_evaluated == 0
    feed(state, stream())
    assert asyncio.run(checkpoint.save_async(state, "shutdown"))  # the worker's whole monitor pickles

    restored, _ = restore_or_build_monitor(tmp_path, settings, join)
    assert restored.monitor.snapshot(T0) == state.monitor.snapshot(T0) and restored.applied == state.applied
    other, _ = restore_or_build_monitor(tmp_path, MonitoringSettings(rank_every=1, warmup_baskets=0, window=50), join)
    assert other.monitor.evaluator.purchases_evaluated == 0  # other window sizes: a cold start


def test_a_monitor_sharing_another_components_scorer_keeps_no_checkpoint(tmp_path):
    state, checkpoint = restore_or_build_monitor(tmp_path, MonitoringSettings(), JoinSettings(), FeatureScorer())
    assert checkpoint is None and not state.applied.offsets
