"""A serving worker learns interactions with the partition they were read from: baskets as the learner forms them."""

from __future__ import annotations

from learner.rich_features import RichFeatures
from serving.history import LiveBehaviour
from streams.records import Interaction, encode
from streams.topics import INTERACTIONS

DAY = 86_400.0
T0 = 1_291_191_960.0


def test_interleaved_partitions_reach_serving_as_whole_baskets():
    live = LiveBehaviour(RichFeatures(lateness_s=600.0))
    fast = [Interaction(f"f{n}", f"f{n}", "Z", "purchase", T0 + 2 * DAY + 60.0 * n) for n in range(4)]
    slow = [Interaction(f"s{n}", "a", item, "purchase", T0) for n, item in enumerate("XYW")]
    slow.append(Interaction("s3", "b", "X", "purchase", T0 + 60.0))
    for one, other in zip(fast, slow, strict=True):  # partition 1 two days ahead of partition 0
        live.apply(INTERACTIONS.name, b"k", encode(one), 1)
        live.apply(INTERACTIONS.name, b"k", encode(other), 0)
    assert [live.item_id(i) for i in live.features.history("a")] == ["X", "Y", "W"]
    assert len(live.features.long_history.recent("a")) == 1 and live.counts["invalid"] == 0
