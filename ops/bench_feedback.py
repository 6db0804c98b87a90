"""``recloop bench feedback``: how close the explanation bandit's helpful rate comes to the oracle's.

Two benchmarks:

* :func:`run_bench_feedback` — the bandit alone, over many simulated shops
  (:mod:`learner.feedback_sim`), in one process: how fast it *can* learn.
* :func:`run_bench_feedback_live` (``--live``) — the real path. On fresh topics of the local broker:
  a ``recloop worker`` (learner off: ingest, monitoring and its explanation bandit), one
  ``recloop serve``, the Online Retail catalogue and interactions up to ``warmup_until``; then the
  replay goes on in event time while the simulated shoppers of :mod:`ops.simulator`
  (``preference="segment"``) ask ``/recommend`` before each real basket, click what they buy and
  rate the explanations they got through ``/feedback``. The worker learns from that feedback,
  publishes its policy on ``recloop.explanation-policy``, the serving worker verifies and adopts it
  and draws the next styles from it. Every verdict is also scored for an oracle (the shopper's
  preferred style whenever it is faithful for the item) and a random faithful style, with the same
  draw. The run stops after ``events`` feedback events; the rates are over the last ``window``.

The replay waits for the worker whenever it falls more than ``max_lag`` interactions behind: the
worker counts a shopper's baskets for the segment it learns under, so it must have seen them (a
real shop's event rate is far below this replay's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from learner.explanation_bandit import segment_of
from learner.feedback_sim import SimConfig, simulate
from ops.processes import ChildProcess, demo_key_unless_configured, free_port, get_json, recloop_env, wait_json
from ops.replay import OutgoingMessage, file_messages, produce
from ops.simulator import ShopperSimulator, ShopperVisit, Verdict, visits
from ops.topic_admin import delete_topics, fresh_run_topics
from streams import records
from streams.app import faust_app_id
from streams.records import Interaction
from streams.settings import KafkaSettings, WorkerSettings
from streams.topics import INTERACTIONS

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"
#: Start of the simulated visits: six months of history (148k interactions) give the shoppers their segments
#: (of the next 1,000 visits 19 % are by new shoppers, 42 % occasional, 39 % regulars).
WARMUP_UNTIL = 1_306_886_400.0  # 2011-06-01T00:00:00Z


def run_bench_feedback(*, events: int = 5000, seeds: int = 20) -> dict:
    """Run :func:`learner.feedback_sim.simulate` for ``seeds`` shops; summarise events-to-90 % and the curves."""
    started = time.perf_counter()
    results = [simulate(SimConfig(events=events, seed=seed)) for seed in range(seeds)]
    reached = [r.events_to_90 for r in results if r.events_to_90 is not None]
    first = results[0]
    return {
        "benchmark": "explanation bandit vs oracle style (learner/feedback_sim.py)",
        "config": first.as_dict()["config"] | {"seed": f"0..{seeds - 1}"},
        "events_to_90_median": statistics.median(reached) if reached else None,
        "events_to_90_max": max(reached) if reached else None,
        "never_reached": seeds - len(reached),
        "bandit_rate_mean": round(statistics.fmean(r.bandit_rate for r in results), 4),
        "oracle_rate_mean": round(statistics.fmean(r.oracle_rate for r in results), 4),
        "random_rate_mean": round(statistics.fmean(r.random_rate for r in results), 4),
        "curve_mean": [{"events": n,
                        "bandit_over_oracle": round(statistics.fmean(r.curve[i][1] / r.curve[i][2] for r in results),
                                                    4)}
                       for i, (n, *_) in enumerate(first.curve)],
        "seconds": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------- --live: the real path


@dataclass
class Tally:
    """Every verdict of the live run, in the order the shoppers gave them."""

    verdicts: list[Verdict] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    policy_versions: set[int] = field(default_factory=set)
    recommendations: int = 0
    errors: int = 0

    def add(self, verdicts: Sequence[Verdict], segment: str) -> None:
        self.verdicts.extend(verdicts)
        self.segments.extend([segment] * len(verdicts))


def rates(verdicts: Sequence[Verdict]) -> dict[str, float | None]:
    """Helpful rates of the served, oracle and random styles, and served over oracle.

    >>> v = [Verdict("a", "a", ("a", "b"), True, True, False), Verdict("b", "a", ("a", "b"), False, True, False)]
    >>> rates(v)
    {'helpful_rate': 0.5, 'oracle_rate': 1.0, 'random_rate': 0.0, 'ratio': 0.5}
    """
    if not verdicts:
        return {"helpful_rate": None, "oracle_rate": None, "random_rate": None, "ratio": None}
    n = len(verdicts)
    helpful = sum(v.helpful for v in verdicts) / n
    oracle = sum(v.oracle_helpful for v in verdicts) / n
    return {"helpful_rate": round(helpful, 4), "oracle_rate": round(oracle, 4),
            "random_rate": round(sum(v.random_helpful for v in verdicts) / n, 4),
            "ratio": round(helpful / oracle, 4) if oracle else None}


def summarize_live(tally: Tally, *, window: int, block: int = 500) -> dict:
    """The benchmark's JSON: rates over the last ``window`` verdicts, the curve per ``block``, and context."""
    last = tally.verdicts[-window:]
    with_choice = [v for v in last if len(v.faithful) > 1]
    curve = [{"feedback_events": min(start + block, len(tally.verdicts)),
              **rates(tally.verdicts[start:start + block])} for start in range(0, len(tally.verdicts), block)]
    return {**rates(last), "feedback_events": len(tally.verdicts), "window": len(last),
            "with_a_choice": {"feedback_events": len(with_choice), **rates(with_choice)},
            "by_segment_in_window": by_segment(last, tally.segments[-window:]),
            "curve": curve, "recommendations": tally.recommendations, "errors": tally.errors,
            "policy_versions_served": len(tally.policy_versions)}


def by_segment(verdicts: Sequence[Verdict], segments: Sequence[str]) -> dict[str, dict]:
    """Per segment: verdicts, how often the preferred style was faithful, which styles were shown, the rates."""
    out: dict[str, dict] = {}
    for segment in sorted(set(segments)):
        mine = [v for v, s in zip(verdicts, segments, strict=True) if s == segment]
        out[segment] = {"feedback_events": len(mine),
                        "preferred_faithful": round(sum(v.preferred in v.faithful for v in mine) / len(mine), 3),
                        "shown": dict(Counter(v.style for v in mine).most_common()),
                        "faithful": dict(Counter("+".join(v.faithful) for v in mine).most_common(5)), **rates(mine)}
    return out


class LiveLoop:
    """Replays the live events while the simulated shoppers visit, until ``target`` feedback events."""

    def __init__(self, settings: KafkaSettings, url: str, worker_url: str, simulator: ShopperSimulator, *,
                 target: int, max_lag: int, k: int) -> None:
        self.settings, self.url, self.worker_url = settings, url, worker_url
        self.simulator = simulator
        self.target, self.max_lag, self.k = target, max_lag, k
        self.tally = Tally()
        self.produced = 0
        self._checked_at = 0
        self.interactions_topic = settings.topic(INTERACTIONS.name)

    async def run(self, events: Sequence[OutgoingMessage], visits_at: dict[float, list[ShopperVisit]],
                  already: int) -> Tally:
        from aiokafka import AIOKafkaProducer

        self.produced = self._checked_at = already
        producer = AIOKafkaProducer(**self.settings.aiokafka_options(), acks="all", linger_ms=5)
        await producer.start()
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                for ts, group in by_timestamp(events):
                    await asyncio.gather(*(self.visit(client, visit) for visit in visits_at.get(ts, [])))
                    if len(self.tally.verdicts) >= self.target:
                        break
                    for message in group:
                        await producer.send(message.topic, message.value, key=message.key)
                    self.produced += len(group)
                    await self.keep_worker_close(producer)
        finally:
            await producer.stop()
        return self.tally

    async def visit(self, client: httpx.AsyncClient, visit: ShopperVisit) -> None:
        """One shopper visit: ``/recommend``, then clicks and verdicts through ``/feedback`` (the real path)."""
        try:
            response = await client.get(f"{self.url}/recommend", params=visit.recommend_params(self.k))
            response.raise_for_status()
            recommendation = response.json()
        except (httpx.HTTPError, ValueError):
            self.tally.errors += 1
            return
        self.tally.recommendations += 1
        if recommendation.get("policy_version") is not None:
            self.tally.policy_versions.add(recommendation["policy_version"])
        events, verdicts = self.simulator.react_scored(visit, recommendation)
        for event in events:
            body = orjson.dumps({k: v for k, v in records.to_dict(event).items() if v is not None})
            try:
                (await client.post(f"{self.url}/feedback", content=body,
                                   headers={"content-type": "application/json"})).raise_for_status()
            except httpx.HTTPError:
                self.tally.errors += 1
        self.tally.add(verdicts, segment_of(visit.baskets_before))

    async def keep_worker_close(self, producer) -> None:
        """Wait while the worker is more than ``max_lag`` interactions behind what was produced."""
        if self.produced - self._checked_at < 500:
            return  # look now and then, not after every timestamp
        self._checked_at = self.produced
        await producer.flush()
        while self.produced - await asyncio.to_thread(worker_accepted, self.worker_url,
                                                      self.interactions_topic) > self.max_lag:
            await asyncio.sleep(0.5)


def worker_accepted(url: str, topic: str) -> int:
    counts = get_json(url) or {}
    return int((counts.get(topic) or {}).get("accepted", 0))


def by_timestamp(messages: Sequence[OutgoingMessage]) -> list[tuple[float, list[OutgoingMessage]]]:
    groups: dict[float, list[OutgoingMessage]] = defaultdict(list)
    for message in messages:
        groups[message.ts].append(message)
    return sorted(groups.items())


def live_visits(events: Sequence[OutgoingMessage], since: float) -> dict[float, list[ShopperVisit]]:
    """The visits (one per real basket) from ``since`` on, by timestamp; segments count from the data's start."""
    purchases = [records.decode(Interaction, m.value) for m in events if m.kind == "purchase"]
    out: dict[float, list[ShopperVisit]] = defaultdict(list)
    for visit in visits(purchases):
        if visit.ts >= since:
            out[visit.ts].append(visit)
    return out


def wait_caught_up(worker_url: str, server_url: str, topic: str, expected: int, worker: ChildProcess,
                   server: ChildProcess, timeout_s: float) -> None:
    """Wait until the worker accepted and the serving worker learned ``expected`` interactions."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in (worker, server):
            if not child.alive:
                raise RuntimeError(f"`recloop {' '.join(child.args)}` exited:\n{child.log_tail()}")
        served = ((get_json(f"{server_url}/healthz") or {}).get("counts") or {}).get("interactions", 0)
        if worker_accepted(worker_url, topic) >= expected and served >= expected:
            return
        time.sleep(1.0)
    raise TimeoutError(f"worker and serving did not catch up with {expected:,} warm-up interactions in "
                       f"{timeout_s:.0f}s; see {worker.log_path} and {server.log_path}")


def bench_env(settings: KafkaSettings, policy_interval_s: float, policy: bool = True) -> dict[str, str]:
    """The children's environment: learner off, frequent policies; the demo key unless a key is configured."""
    extra = {"RECLOOP_LEARNER": "off", "RECLOOP_POLICY_INTERVAL_S": str(policy_interval_s),
             "RECLOOP_POLICY_ENABLED": "1" if policy else "0",
             "RECLOOP_BASKET_LATENESS_S": "86400", "RECLOOP_LOG_LEVEL": os.environ.get("RECLOOP_LOG_LEVEL", "INFO")}
    return recloop_env(settings, **extra, **demo_key_unless_configured())


def run_bench_feedback_live(base_settings: KafkaSettings, *, events: int = 5000, window: int = 1000,
                            warmup_until: float = WARMUP_UNTIL, tiny: bool = False, k: int = 10, seed: int = 0,
                            policy_interval_s: float = 1.0, max_lag: int = 2000, data: Path = DATA,
                            start_timeout_s: float = 600.0, policy: bool = True) -> dict:
    """The live benchmark (module docstring); returns its JSON object. ``policy=False``: the baseline, no policy
    is published and serving names the largest scoring term, as before serving read the bandit."""
    started = time.monotonic()
    settings = fresh_run_topics(base_settings, "fbk")
    home = settings.home
    messages = file_messages(data, settings)
    items = [m for m in messages if m.kind == "item"]
    interactions = [m for m in messages if m.kind != "item"]
    split = bisect_left([m.ts for m in interactions], warmup_until)
    warm, live = interactions[:split], interactions[split:]
    visits_at = live_visits(interactions, warmup_until)
    env = bench_env(settings, policy_interval_s, policy)
    worker_port, serve_port = free_port(), free_port()
    worker = ChildProcess(["worker"], {**env, "RECLOOP_WORKER_WEB_PORT": str(worker_port)}, home / "worker.log")
    server = ChildProcess(["serve", "--port", str(serve_port), *(["--tiny"] if tiny else [])], env,
                          home / "serve.log")
    worker_url, url = f"http://127.0.0.1:{worker_port}/counts/", f"http://127.0.0.1:{serve_port}"
    topic = settings.topic(INTERACTIONS.name)
    try:
        worker.start()
        server.start()
        wait_json(worker_url, worker, timeout_s=start_timeout_s)
        wait_json(f"{url}/healthz", server, timeout_s=start_timeout_s)
        asyncio.run(produce(items + warm, settings))
        wait_caught_up(worker_url, url, topic, len(warm), worker, server, start_timeout_s)
        warmup_s = time.monotonic() - started
        log.info("warm-up: %d interactions learned in %.0fs; shoppers visit from here", len(warm), warmup_s)
        simulator = ShopperSimulator(seed=seed, preference="segment")
        loop = LiveLoop(settings, url, worker_url, simulator, target=events, max_lag=max_lag, k=k)
        tally = asyncio.run(loop.run(live, visits_at, already=len(warm)))
        health = get_json(f"{url}/healthz") or {}
    finally:
        server.stop()
        worker.stop()
        delete_topics(settings, app_id=faust_app_id(settings, WorkerSettings()))
    result = summarize_live(tally, window=window)
    headline = {key: result.pop(key) for key in ("helpful_rate", "oracle_rate", "random_rate", "ratio",
                                                  "feedback_events")}
    return {**headline, "benchmark": "explanation policy through the real path (recloop bench feedback --live)",
            "target": f"ratio >= 0.9 over the last {window} feedback events, within {events}",
            "met": headline["ratio"] is not None and headline["ratio"] >= 0.9,
            **result, "policy": "published" if policy else "off (largest scoring term)",
            "base": "tiny-bert" if tiny else "all-MiniLM-L6-v2", "warmup_interactions": len(warm),
            "warmup_s": round(warmup_s, 1), "policy_version": health.get("policy_version"),
            "rejected_policies": health.get("rejected_policies"), "seconds": round(time.monotonic() - started, 1),
            "logs": str(home)}
