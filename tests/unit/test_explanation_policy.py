"""The explanation policy: signed and versioned like adapters, chosen among faithful styles, hot-swapped by serving."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter

import orjson
import pytest

from learner.encoder import tiny_bert
from learner.explanation_bandit import ExplanationBandit
from learner.explanation_policy import PolicyRejected, make_policy, signing_bytes, thompson_style, verify_policy
from serving.policy import PolicyHolder
from serving.publishing import MemoryPublisher
from serving.settings import ServingSettings
from serving.worker import ServingWorker
from streams.policy_publisher import PolicyPublisher, PolicySettings
from streams.records import EXPLANATION_STYLES, ExplanationPolicy, Impression, InvalidRecord, decode, encode
from tests.unit.test_serving_state import make_live

KEY = b"policy-test-key"
T0 = 1_300_000_000.0


def trained_bandit(best: str = "co_purchase", segment: str = "regular", n: int = 200) -> ExplanationBandit:
    """A bandit sure that ``best`` helps ``segment`` and every other style does not."""
    bandit = ExplanationBandit(seed=0)
    for _ in range(n):
        for style in EXPLANATION_STYLES:
            bandit.learn_one(segment, style, helpful=style == best)
    return bandit


def policy(version: int = 1, key: bytes = KEY, **kwargs) -> ExplanationPolicy:
    return make_policy(trained_bandit(**kwargs), version=version, key=key, created_at=T0)


class Listener:
    def __init__(self) -> None:
        self.swapped: list[int] = []
        self.rejected: Counter[str] = Counter()

    def policy_swapped(self, policy: ExplanationPolicy) -> None:
        self.swapped.append(policy.version)

    def policy_rejected(self, kind: str, reason: str) -> None:
        self.rejected[kind] += 1


# --------------------------------------------------------------------------- the record: sign, verify, reject


def test_a_policy_survives_the_topic_and_verifies():
    sent = policy(version=5)
    received = decode(ExplanationPolicy, encode(sent))
    assert received == sent and signing_bytes(received) == signing_bytes(sent)
    verify_policy(received, KEY, current_version=4)
    assert received.posteriors["regular"]["co_purchase"] == (201.0, 1.0)


def test_forged_and_foreign_policies_are_rejected():
    genuine = policy(version=2)
    forged = dataclasses.replace(genuine, posteriors={"regular": {"popular": (999.0, 1.0)}})
    for candidate, key in ((forged, KEY), (genuine, b"another-deployment")):
        with pytest.raises(PolicyRejected) as caught:
            verify_policy(candidate, key, None)
        assert caught.value.kind == "signature"
    tampered = orjson.loads(encode(genuine))
    tampered["version"] = 3  # a replayed policy renumbered to look newer
    with pytest.raises(PolicyRejected, match="bad signature"):
        verify_policy(decode(ExplanationPolicy, orjson.dumps(tampered)), KEY, 2)


def test_unsigned_or_malformed_policies_are_invalid_records():
    data = orjson.loads(encode(policy()))
    for broken in ({k: v for k, v in data.items() if k != "signature"}, {**data, "styles": ["made_up"]},
                   {**data, "posteriors": {"regular": {"history": [0, 1]}}}, {**data, "version": 0}):
        with pytest.raises(InvalidRecord):
            decode(ExplanationPolicy, orjson.dumps(broken))


def test_older_or_equal_versions_are_rejected():
    for older in (1, 7):
        with pytest.raises(PolicyRejected) as caught:
            verify_policy(policy(version=older), KEY, current_version=7)
        assert caught.value.kind == "version"


# --------------------------------------------------------------------------- Thompson sampling among faithful styles


def test_thompson_never_leaves_the_faithful_styles():
    sure = policy(best="history")
    for n in range(300):
        faithful = ("co_purchase", "similar_text", "popular")[: 1 + n % 3]
        style = thompson_style(sure, "regular", faithful, user_id=f"u{n}", item_id=f"i{n}")
        assert style in faithful  # "history" helps most, but is not an honest reason for these items


def test_thompson_shows_the_learned_style_when_it_is_faithful_and_explores_unknown_segments():
    sure = policy(best="co_purchase")
    chosen = Counter(thompson_style(sure, "regular", EXPLANATION_STYLES, user_id=f"u{n}", item_id="A")
                     for n in range(300))
    assert chosen["co_purchase"] >= 295
    unknown = Counter(thompson_style(sure, "new", EXPLANATION_STYLES, user_id=f"u{n}", item_id="A")
                      for n in range(400))
    assert set(unknown) == set(EXPLANATION_STYLES)  # no evidence for "new": the prior explores every style


def test_thompson_is_deterministic_per_shopper_item_and_version():
    loose = make_policy(ExplanationBandit(), version=1, key=KEY, created_at=T0)
    first = [thompson_style(loose, "new", EXPLANATION_STYLES, user_id="u1", item_id=f"i{n}") for n in range(50)]
    again = [thompson_style(loose, "new", EXPLANATION_STYLES, user_id="u1", item_id=f"i{n}") for n in range(50)]
    newer = dataclasses.replace(loose, version=2)
    redrawn = [thompson_style(newer, "new", EXPLANATION_STYLES, user_id="u1", item_id=f"i{n}") for n in range(50)]
    assert first == again and first != redrawn


# --------------------------------------------------------------------------- the holder: swap, keep, count


def test_the_holder_swaps_newer_valid_policies_and_keeps_the_current_on_anything_else():
    listener = Listener()
    holder = PolicyHolder(KEY, listener)
    assert holder.apply(encode(policy(version=3)))
    forged = dataclasses.replace(policy(version=9), signature="0" * 64)
    assert not holder.apply(encode(forged))
    assert not holder.apply(encode(policy(version=2)))
    assert not holder.apply(encode(policy(version=10, key=b"someone-else")))
    assert not holder.apply(b"not json") and not holder.apply(None)
    assert holder.version == 3 and listener.swapped == [3]
    assert listener.rejected == {"signature": 2, "version": 1, "invalid_record": 1}
    assert holder.apply(encode(policy(version=4)))
    assert holder.version == 4


# --------------------------------------------------------------------------- the publisher's cadence


def test_the_publisher_sends_only_changes_with_strictly_increasing_versions():
    bandit = ExplanationBandit(seed=0)
    feedback = [0]
    clock = [T0]
    publisher = PolicyPublisher(lambda: bandit, KEY, PolicySettings(min_feedback=2), lambda: feedback[0],
                                clock=lambda: clock[0])
    assert publisher.next_policy() is None  # nothing learned yet
    bandit.learn_one("regular", "history", True)
    feedback[0] = 1
    assert publisher.next_policy() is None  # fewer than min_feedback new events
    bandit.learn_one("regular", "history", True)
    feedback[0] = 2
    first = publisher.next_policy()
    publisher.published(first)
    assert first.version == int(T0 * 1000) and first.feedback_events == 2
    verify_policy(first, KEY, None)
    feedback[0] = 4
    assert publisher.next_policy() is None  # more events counted, but the posteriors did not change
    bandit.learn_one("new", "popular", False)
    clock[0] = T0 - 60  # the wall clock stepped back: versions still increase
    second = publisher.next_policy()
    assert second.version == first.version + 1


# --------------------------------------------------------------------------- serving under a policy


@pytest.fixture(scope="module")
def base():
    return tiny_bert(seed=0)


def test_serving_explains_under_the_swapped_policy_and_logs_its_version(base):
    live = make_live()  # twelve regulars: their items can be explained by "history" and/or "similar_text"
    worker = ServingWorker(ServingSettings(adapter_key=KEY.decode()), base, live=live, publisher=MemoryPublisher())
    shoppers = [f"u{n}" for n in range(12)]

    async def scenario() -> tuple[list, list, list]:
        await worker.updater.serve_base()
        ts = live.features.clock + 1
        before = [await worker.recommend(user, 10, ts=ts) for user in shoppers]
        assert worker.policies.apply(encode(policy(version=11, best="similar_text", segment="regular")))
        text = [await worker.recommend(user, 10, ts=ts) for user in shoppers]
        assert worker.policies.apply(encode(policy(version=12, best="history", segment="regular")))
        history = [await worker.recommend(user, 10, ts=ts) for user in shoppers]
        await worker.impressions.drain()
        return before, text, history

    def shown(recommendations) -> list[tuple[str, tuple[str, ...]]]:
        return [(item["explanation"]["style"], tuple(item["faithful_styles"]))
                for r in recommendations for item in r.items]

    def share(recommendations, style: str) -> float:
        both = [s for s, faithful in shown(recommendations) if faithful == ("history", "similar_text")]
        assert len(both) >= 50
        return both.count(style) / len(both)

    before, text, history = asyncio.run(scenario())
    assert all(style in faithful for r in (before, text, history) for style, faithful in shown(r))
    assert share(text, "similar_text") >= 0.95 and share(history, "history") >= 0.95
    assert [{r.policy_version for r in rs} for rs in (before, text, history)] == [{None}, {11}, {12}]
    logged = Counter(decode(Impression, value).policy_version for topic, _, value in worker.publisher.messages
                     if topic == "recloop.impressions")
    assert logged == {None: 12, 11: 12, 12: 12}
    assert worker.health()["policy_version"] == 12 and worker.metrics.policy_swap_count == 2


# --------------------------------------------------------------------------- calibrated confidence


def test_the_policy_carries_the_served_scores_calibration_signed():
    calibrated = make_policy(trained_bandit(), version=5, key=KEY, created_at=T0, calibration=(0.4, 0.2, 1.5, -2.0))
    back = decode(ExplanationPolicy, encode(calibrated))
    assert back.calibration == (0.4, 0.2, 1.5, -2.0)
    verify_policy(back, KEY, None)
    tampered = dataclasses.replace(back, calibration=(0.4, 0.2, 3.0, -2.0))
    with pytest.raises(PolicyRejected, match="signature"):
        verify_policy(tampered, KEY, None)
    with pytest.raises(InvalidRecord, match="calibration"):
        decode(ExplanationPolicy, orjson.dumps({**orjson.loads(encode(back)), "calibration": [1.0, 0.0, 1.0, 0.0]}))


def test_the_publisher_sends_a_new_calibration_even_without_new_feedback():
    bandit = trained_bandit()
    platt = [None]
    publisher = PolicyPublisher(lambda: bandit, KEY, PolicySettings(), lambda: 10, clock=lambda: T0,
                                calibration=lambda: platt[0])
    first = publisher.next_policy()
    publisher.published(first)
    assert first.calibration is None and publisher.next_policy() is None
    platt[0] = (0.3, 0.1, 1.0, -1.0)
    second = publisher.next_policy()
    assert second is not None and second.calibration == (0.3, 0.1, 1.0, -1.0)
    publisher.published(second)
    platt[0] = (0.3, 0.1, 1.01, -1.0)  # within the tolerance: not worth a record
    assert publisher.next_policy() is None


def test_confidence_is_the_calibrated_probability_of_the_served_score(base):
    live = make_live()
    worker = ServingWorker(ServingSettings(adapter_key=KEY.decode()), base, live=live, publisher=MemoryPublisher())
    mean, std, a, b = 0.5, 0.25, 2.0, -1.0

    async def scenario():
        await worker.updater.serve_base()
        ts = live.features.clock + 1
        before = await worker.recommend("u1", 5, ts=ts)
        calibrated = make_policy(trained_bandit(), version=21, key=KEY, created_at=T0, calibration=(mean, std, a, b))
        assert worker.policies.apply(encode(calibrated))
        return before, await worker.recommend("u1", 5, ts=ts)

    before, after = asyncio.run(scenario())
    for item in after.items:
        expected = 1.0 / (1.0 + math.exp(-(a * (item["score"] - mean) / std + b)))
        assert item["explanation"]["confidence"] == pytest.approx(expected, abs=1e-3)
    shares = [i["explanation"]["confidence"] for i in before.items]  # without a calibration: the reason's share
    assert shares != [i["explanation"]["confidence"] for i in after.items]
