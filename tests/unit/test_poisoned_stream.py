"""A poisoned stream raises a drift alarm on the item mix: a bot hammering one item, or a burst of random labels.

The worker's own monitor (:class:`learner.online_metrics.OnlineMonitor`, default detectors) on the bundled
data, then the poison; the clean stream alone raises no item-mix alarm. The runbook is in docs/operations.md,
"Poisoned stream".
"""

from __future__ import annotations

import random

import pytest

from learner.online_metrics import OnlineMonitor
from streams.records import Interaction


def clean_monitor(retail) -> tuple[OnlineMonitor, list, float]:
    items, interactions = retail
    monitor = OnlineMonitor(warmup_baskets=200, clock=lambda: 0.0)
    for item in items:
        monitor.learn_item(item)
    alarms = [a for i in interactions for a in monitor.learn_interaction(i)]
    return monitor, alarms, max(i.ts for i in interactions)


def item_alarms(alarms) -> list:
    return [a for a in alarms if a.signal == "item"]


def test_the_clean_stream_raises_no_item_mix_alarm(retail):
    _, alarms, _ = clean_monitor(retail)
    assert item_alarms(alarms) == []


@pytest.mark.parametrize("poison", ["bot", "random_labels"])
def test_a_poisoned_burst_raises_an_item_mix_alarm_within_a_hundred_baskets(retail, poison):
    monitor, _, ts = clean_monitor(retail)
    items = sorted({i.item_id for i in retail[1]})
    rng, raised, baskets = random.Random(0), [], 0
    while not item_alarms(raised) and baskets < 300:
        ts, baskets = ts + 60.0, baskets + 1
        if poison == "bot":  # one account buying the same item, basket after basket
            lines = [("bot-1", items[0])]
        else:  # new accounts buying items drawn uniformly from the catalogue
            lines = [(f"random-{baskets}", rng.choice(items)) for _ in range(rng.randint(1, 10))]
        for n, (user, item) in enumerate(lines):
            raised += monitor.learn_interaction(Interaction(event_id=f"{poison}-{baskets}-{n}", user_id=user,
                                                            item_id=item, type="purchase", ts=ts))
    [alarm] = item_alarms(raised)
    assert baskets <= 100, baskets  # measured: 61 (bot) and 63 (random labels)
    assert (alarm.detector, alarm.severity) == ("page_hinkley", "critical")
