"""Baskets assembled from invoice lines read from several partitions, interleaved in any order.

Within a partition lines arrive in timestamp order; across partitions any interleaving may reach the
consumer (Faust interleaves them record by record, and one partition may run days ahead of another in a
replay). Learned with their ``source``, the baskets closed are exactly those of the offline stream: no
basket is split into fragments, and once every partition has been seen they are learned oldest first.

The property tests draw their streams and interleavings from a seeded generator (the project does not depend on
hypothesis): many random cases, the same ones on every run.
"""

from __future__ import annotations

import itertools
import math
import pickle
import random
from collections import Counter

import pytest

from learner.features import LONGEST_RUN, QUIET_ROUNDS, BehaviourFeatures
from learner.rich_features import RichFeatures

DAY = 86_400.0

#: one event of a partition: (user, item, type, ts)
Event = tuple[str, str, str, float]

_GAPS = [0.0, 0.0, 1.0, 60.0, 700.0, DAY, 3 * DAY]
_KINDS = ["purchase"] * 4 + ["view"]
CASES = 300


def partition_streams(rng: random.Random, max_sources: int = 4) -> list[list[Event]]:
    """Per partition, its events in timestamp order (a partition's shoppers are its own)."""
    streams = []
    for source in range(rng.randint(1, max_sources)):
        ts, events = rng.choice([0.0, 500.0, DAY]), []
        for _ in range(rng.randint(1, 60)):
            ts += rng.choice(_GAPS)
            events.append((f"p{source}u{rng.randint(0, 2)}", rng.choice("ABCDE"), rng.choice(_KINDS), ts))
        streams.append(events)
    return streams


def offline_baskets(streams: list[list[Event]]) -> Counter:
    """The baskets of the streams: one shopper's purchases at one timestamp, items in first-seen order."""
    baskets: dict[tuple[str, float], dict[str, None]] = {}
    for events in streams:
        for user, item, kind, ts in events:
            if kind == "purchase":
                baskets.setdefault((user, ts), {})[item] = None
    return Counter((user, ts, tuple(items)) for (user, ts), items in baskets.items())


def interleave(rng: random.Random, streams: list[list[Event]], lateness_s: float) -> list[tuple[int, Event]]:
    """A random interleaving of the partitions, each kept in order, some partitions drawn far more often than
    others (so others fall silent for long stretches). With a finite lateness it never lets a partition fall
    quiet mid-basket (that is what the lateness fallback is for): when the drawn partition's event would make
    one quiet, a partition that is mid-basket goes instead (one whose event makes none quiet)."""
    position = [0] * len(streams)
    weights = [rng.choice([1, 1, 5, 30]) for _ in streams]
    clock: dict[int, float] = {}
    first: dict[int, float] = {}
    seq: dict[int, int] = {}
    then: dict[int, dict[int, float]] = {}  # every clock when a partition last delivered

    def quiet(source: int, clocks: dict[int, float], seqs: dict[int, int], n: int, longest: int) -> bool:
        """The rule of the module docstring, written out again (an oracle, not the code under test)."""
        if n - seqs[source] < len(clocks) * max(QUIET_ROUNDS, 2 * min(longest, LONGEST_RUN)):
            return False
        since = [q for q in clocks if seqs[q] > seqs[source]]
        return all(clocks[q] - then[source].get(q, first.get(q, clocks[q])) > lateness_s for q in since)

    def cuts_a_basket(source: int, mid_basket: list[int], longest: int) -> bool:
        """Would the next event of ``source`` make a partition that is mid-basket quiet?"""
        ts = streams[source][position[source]][3]
        clocks = {**clock, source: max(clock.get(source, -math.inf), ts)}
        seqs = {**seq, source: len(out) + 1}
        run = max(longest, 1 + run_of(out, source))
        return any(quiet(m, clocks, seqs, len(out) + 1, run) for m in mid_basket if m != source)

    out: list[tuple[int, Event]] = []
    longest = 0  # the longest run of consecutive events from one partition
    while any(position[s] < len(events) for s, events in enumerate(streams)):
        waiting = [s for s, events in enumerate(streams) if position[s] < len(events)]
        mid_basket = [s for s in waiting if position[s] > 0
                      and streams[s][position[s]][3] == streams[s][position[s] - 1][3]]
        source = rng.choices(waiting, [weights[s] for s in waiting])[0]
        if math.isfinite(lateness_s) and cuts_a_basket(source, mid_basket, longest):
            source = next(s for s in rng.sample(mid_basket, len(mid_basket))
                          if not cuts_a_basket(s, mid_basket, longest))
        event = streams[source][position[source]]
        position[source] += 1
        clock[source] = max(clock.get(source, -math.inf), event[3])
        first.setdefault(source, event[3])
        seq[source] = len(out) + 1
        then[source] = dict(clock)
        out.append((source, event))
        longest = max(longest, run_of(out, source))
    return out


def run_of(out: list[tuple[int, Event]], source: int) -> int:
    """How many of the last events of ``out`` in a row come from ``source``."""
    return sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == source, reversed(out)))


def learned_baskets(features: BehaviourFeatures, interleaved: list[tuple[int, Event]]) -> list[tuple]:
    """Every basket the features close, in the order they are learned."""
    closed: list[tuple] = []
    features.before_learn = lambda baskets: closed.extend(
        (b.user_id, b.ts, tuple(features.index.code_of(i) for i in b.items)) for b in baskets)
    for source, (user, item, kind, ts) in interleaved:
        features.learn_interaction(user, item, kind, ts, source=source)
    features.flush()
    return closed


@pytest.mark.parametrize("seed", range(CASES))
def test_any_interleaving_closes_exactly_the_offline_baskets_in_timestamp_order(seed):
    rng = random.Random(seed)
    streams = partition_streams(rng)
    firsts = rng.sample(range(len(streams)), len(streams))  # every partition says something first …
    interleaved = [(s, streams[s][0]) for s in firsts]
    rest = interleave(rng, [events[1:] for events in streams], math.inf)  # … then any interleaving
    closed = learned_baskets(BehaviourFeatures(lateness_s=math.inf), interleaved + rest)
    assert Counter(closed) == offline_baskets(streams)
    assert [ts for _, ts, _ in closed] == sorted(ts for _, ts, _ in closed)


@pytest.mark.parametrize("seed", range(CASES))
def test_with_a_lateness_fallback_no_basket_is_split(seed):
    rng = random.Random(10_000 + seed)
    streams, lateness_s = partition_streams(rng), rng.choice([0.0, 600.0, DAY])
    closed = learned_baskets(RichFeatures(lateness_s=lateness_s), interleave(rng, streams, lateness_s))
    assert Counter(closed) == offline_baskets(streams)


def replay_two_partitions() -> list[tuple[int, Event]]:
    """Partition 1 runs two days ahead of partition 0 from the start, records alternating; partition 0's basket
    has 3 lines."""
    fast = [(f"f{n}", "Z", "purchase", 2 * DAY + 60.0 * n) for n in range(4)]
    slow = [("a", "X", "purchase", 0.0), ("a", "Y", "purchase", 0.0), ("a", "W", "purchase", 0.0),
            ("b", "X", "purchase", 60.0)]
    return [pair for both in zip(((1, e) for e in fast), ((0, e) for e in slow), strict=True) for pair in both]


def test_a_partition_days_ahead_neither_splits_nor_overtakes_a_lagging_one():
    interleaved = replay_two_partitions()
    closed = learned_baskets(BehaviourFeatures(lateness_s=600.0), interleaved)
    assert closed[0] == ("a", 0.0, ("X", "Y", "W"))
    assert [ts for _, ts, _ in closed] == sorted(ts for _, ts, _ in closed)

    legacy = BehaviourFeatures(lateness_s=600.0)  # one ordered stream assumed: the fast partition splits a's basket
    for _, (user, item, kind, ts) in interleaved:
        legacy.learn_interaction(user, item, kind, ts)
    legacy.flush()
    assert len(legacy.long_history.recent("a")) > 1


def test_a_quiet_partition_stops_holding_the_others_back():
    features = BehaviourFeatures(lateness_s=600.0)
    features.learn_interaction("a", "X", "purchase", 0.0, source=0)  # partition 0 then says nothing
    for n in range(QUIET_ROUNDS * 3):  # partitions 1 and 2 go on for 8 rounds, by 10 s an event
        features.learn_interaction(f"b{n}", "Y", "purchase", 100.0 + 10 * n, source=1 + n % 2)
    assert not features.knows("a") and not features.knows("b0")  # 0 may still send lines at 0.0: it holds 1 back
    assert not features.quiet(0) and features.watermark() == 0.0  # the others moved on by less than 600 s
    features.learn_interaction("c", "Y", "purchase", 711.0, source=1)
    assert not features.quiet(0)  # 2 has not moved on by 600 s
    features.learn_interaction("c", "Y", "purchase", 712.0, source=2)
    assert features.quiet(0) and features.watermark() == 711.0
    assert features.knows("a") and features.knows("b0")  # 0's basket and 1's and 2's older ones are closed


def test_the_others_running_far_ahead_for_a_few_records_do_not_make_a_partition_quiet():
    """Partitions crossing a night's gap, each in one record: fast, but not for long enough to silence one."""
    features = BehaviourFeatures(lateness_s=600.0)
    for source, user, item, ts in [(0, "a", "X", 0.0), (1, "b", "Y", 10.0), (2, "c", "Y", 20.0),
                                   (1, "d", "Z", 50_000.0), (2, "e", "Z", 50_000.0), (0, "a", "Z", 0.0)]:
        features.learn_interaction(user, item, "purchase", ts, source=source)
    assert not features.knows("a")
    features.learn_interaction("f", "X", "view", 40.0, source=0)
    assert features.long_history.recent("a") == [(0, 2)] and features.watermark() == 40.0


def test_features_pickled_mid_stream_continue_exactly():
    interleaved = replay_two_partitions() * 2
    whole = learned_baskets(RichFeatures(lateness_s=600.0), interleaved)
    first = RichFeatures(lateness_s=600.0)
    head = learned_baskets_without_flush(first, interleaved[:5])
    again = pickle.loads(pickle.dumps(first))
    assert head + learned_baskets(again, interleaved[5:]) == whole


def learned_baskets_without_flush(features: BehaviourFeatures, interleaved: list[tuple[int, Event]]) -> list[tuple]:
    closed: list[tuple] = []
    features.before_learn = lambda baskets: closed.extend(
        (b.user_id, b.ts, tuple(features.index.code_of(i) for i in b.items)) for b in baskets)
    for source, (user, item, kind, ts) in interleaved:
        features.learn_interaction(user, item, kind, ts, source=source)
    return closed


def test_features_pickled_before_sources_existed_load_with_none_seen():
    features = BehaviourFeatures()
    features.learn_interaction("a", "X", "purchase", 0.0)
    state = features.__dict__.copy()
    for name in ("_source_clock", "_source_first", "_source_seq", "_seq", "_clocks_when_heard", "_run_source", "_run",
                 "_longest_run", "_open_heap"):
        del state[name]
    old = BehaviourFeatures.__new__(BehaviourFeatures)
    old.__setstate__(state)
    old.learn_interaction("b", "Y", "purchase", 60.0, source=0)
    old.learn_interaction("b", "Y", "purchase", 120.0, source=0)
    assert old.knows("a") and old.knows("b")
