"""Monitoring through the real broker: what the monitoring code publishes, `recloop report` plots and
`recloop monitor --once` shows.

The first test publishes with the monitoring code itself (no worker: fast, runs everywhere); the
second runs `recloop worker` and checks the metrics it publishes from events it consumed. The
report/monitor rendering is also checked without a broker.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import socket
import subprocess
import sys
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from rich.console import Console

from learner.online_metrics import OnlineMonitor, PrequentialEvaluator
from ops.monitor import OpsFeed, OpsState, render, run_monitor
from ops.report import write_report
from streams.monitoring import alarm_message, metric_message, with_label
from streams.records import (
    AdapterUpdate,
    DriftAlarm,
    ExplanationFeedback,
    Impression,
    Interaction,
    MetricSnapshot,
    RecommendedItem,
    encode,
)
from tests.conftest import REPO, WorkerProcess, wait_for

T0 = 1.7e9  # event time of the synthetic shop


def shop_events() -> list[Interaction]:
    """600 hourly baskets of 3 lines before T0: 20 regulars re-buying their items, then only newcomers."""
    events = []
    for b in range(600):
        user = f"regular-{b % 20}" if b < 300 else f"newcomer-{b}"
        for line in range(3):
            events.append(Interaction(f"ev-{b}-{line}", user, f"item-{(b % 20 + 7 * line) % 40}", "purchase",
                                      T0 - 3600 * (600 - b), price=2.0 + line))
    return events


#: regular-1's next basket, an hour after the impressions: what served quality scores them against.
NEXT_BASKET = Interaction("next-basket", "regular-1", "item-1", "purchase", T0 + 3600)
#: A later event: event time passes the impressions' label window and grace (they close) and the next basket.
CLOSER = Interaction("closer", "regular-2", "item-3", "view", T0 + 10_000)
#: Served figures of the three impressions (item-0, item-1, item-2) against {item-1}: item-1 at rank 1; the
#: repeat baseline shows regular-1's own items, bought together (tied), by popularity: item-15, item-8, item-1.
SERVED_NDCG, REPEAT_NDCG = "0.6309", "0.5000"


def impressions_and_responses() -> tuple[list[Impression], list[Interaction], list[ExplanationFeedback]]:
    """Three impressions at T0, two answered (a click, an add-to-cart), and explanation feedback."""
    def shown(rec_id: str, ts: float) -> Impression:
        items = tuple(RecommendedItem(f"item-{k}", 1.0 - k / 10, {"style": "history"}) for k in range(3))
        return Impression(rec_id, "regular-1", ts, "v1", items)

    impressions = [shown("r1", T0), shown("r2", T0 + 10), shown("r3", T0 + 20)]
    responses = [Interaction("click-1", "regular-1", "item-1", "click", T0 + 60, rec_id="r1"),
                 Interaction("cart-2", "regular-1", "item-2", "add_to_cart", T0 + 70, rec_id="r2")]
    verdicts = [("history", True), ("history", True), ("history", True), ("history", False),
                ("popular", True), ("popular", False)]
    feedback = [ExplanationFeedback(f"fb-{i}", "regular-1", "r1", "item-1", f"x{i}", style, helpful, T0 + 100 + i,
                                    None if helpful else "irrelevant")
                for i, (style, helpful) in enumerate(verdicts)]
    return impressions, responses, feedback


def adapter_update(version: str, parent: str | None, created_at: float) -> AdapterUpdate:
    return AdapterUpdate(version=version, parent=parent, base_fingerprint="tiny", created_at=created_at,
                         metrics={"ndcg_at_10": 0.31, "serving_ndcg_at_10": 0.29, "auc": 0.8}, sha256="0" * 64,
                         signature="test", payload=b"not a real adapter")


async def send(settings, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(**settings.aiokafka_options(), max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(settings.topic(topic), key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def cli(settings, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    env = {"RECLOOP_KAFKA_BOOTSTRAP": settings.bootstrap, "RECLOOP_TOPIC_PREFIX": settings.topic_prefix,
           "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(settings.home / "mpl")}
    result = subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.kafka
@pytest.mark.slow
def test_report_and_monitor_show_what_the_monitoring_code_published(kafka_settings, tmp_path):
    clock = [T0]
    monitor = OnlineMonitor(PrequentialEvaluator(), clock=lambda: clock[0], warmup_baskets=0)
    messages, alarms = [], []

    def snapshot() -> None:
        messages.extend(("ops.metrics", *metric_message(s)) for s in with_label(monitor.snapshot(), worker="w1"))

    for i, event in enumerate(shop_events()):
        clock[0] = T0 + i  # one second of processing time per event
        alarms += monitor.learn_interaction(event)
        if i % 150 == 149:
            snapshot()
    impressions, responses, feedback = impressions_and_responses()
    for shown in impressions:
        alarms += monitor.learn_impression(shown)
    for event in [*responses, NEXT_BASKET, CLOSER]:
        alarms += monitor.learn_interaction(event)
    for verdict in feedback:
        alarms += monitor.learn_feedback(verdict)
    alarms += monitor.flush()
    snapshot()
    messages += [("ops.drift", *alarm_message(a)) for a in alarms]
    messages += [("model-updates", b"adapter", encode(adapter_update("v1", None, T0 + 400))),
                 ("model-updates", b"adapter", encode(adapter_update("v2", "v1", T0 + 1200)))]
    assert any(a.signal == "miss@10" and a.severity == "critical" for a in alarms)  # the newcomers arrived
    asyncio.run(send(kafka_settings, messages))

    out = tmp_path / "report"
    summary = orjson.loads(cli(kafka_settings, "report", "--out", str(out)).stdout)
    assert summary["snapshots"] == sum(1 for topic, *_ in messages if topic == "ops.metrics")
    assert summary["alarms"] == len(alarms) and summary["adapters"] == 2
    for image in ("served.png", "baseline_ranking.png", "classification.png", "impressions.png", "explanations.png",
                  "drift.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    assert summary["images"][0] == "served.png"  # the headline comes first
    text = (out / "summary.md").read_text()
    assert text.index("## Served quality") < text.index("## Metrics")
    assert f"| all | {SERVED_NDCG} | {REPEAT_NDCG} | +0.1309 | 1.0000 | 1.0000 | 1.0000 | 3 / 3 |" in text
    assert f"| v1 | {SERVED_NDCG} | {REPEAT_NDCG} |" in text
    assert "| ctr |" in text and "| 0.6667 |" in text  # r1 and r2 answered, r3 not
    assert "| explanation_helpful_rate | style=history | 0.75 |" in text
    assert "| miss@10 | adwin | critical |" in text and "| v2 | v1 |" in text
    assert "![served](served.png)" in text and "![baseline_ranking](baseline_ranking.png)" in text

    frame = cli(kafka_settings, "monitor", "--once", "--worker-url", "http://127.0.0.1:9").stdout
    last_hr = [s for s in monitor.snapshot() if s.name == "baseline.hr_at_10"][0].value
    assert "baseline.hr_at_10" in frame and f"{last_hr:.4g}" in frame
    assert frame.index("served quality") < frame.index("throughput") and SERVED_NDCG in frame
    assert "miss@10" in frame and "critical" in frame
    assert "v2" in frame and "published" in frame
    assert "worker not reachable" in frame

    # The live view (what an operator's terminal shows) redraws from the same topics.
    screen = io.StringIO()
    code = run_monitor(kafka_settings, worker_url="http://127.0.0.1:9", group_ids=("nobody",), once=False,
                       interval_s=0.2, console=Console(file=screen, force_terminal=True, width=160), max_frames=2)
    assert code == 0 and "served quality" in screen.getvalue() and "miss@10" in screen.getvalue()


def monitoring_is_wired() -> bool:
    import streams.worker

    return "register_monitoring" in inspect.getsource(streams.worker)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.skipif(not monitoring_is_wired(), reason="register_monitoring is not wired into streams/worker.py yet")
def test_the_worker_publishes_metrics_and_alarms_from_what_it_consumed(kafka_settings, worker_factory, monkeypatch):
    monkeypatch.setenv("RECLOOP_MONITOR_PUBLISH_INTERVAL_S", "1")
    monkeypatch.setenv("RECLOOP_MONITOR_RANK_EVERY", "1")
    monkeypatch.setenv("RECLOOP_MONITOR_WARMUP_BASKETS", "0")
    monkeypatch.setenv("RECLOOP_LEARNER", "off")  # this test is about monitoring; learning has its own
    worker = worker_factory()
    impressions, responses, feedback = impressions_and_responses()
    events = shop_events()
    # The history first, as in a shop: serving computed these impressions from it. (Sent together, the worker may
    # read the impressions topic before the shopper's history, and the repeat baseline beside them would be computed
    # from a state serving never had.)
    asyncio.run(send(kafka_settings, [("interactions", e.user_id.encode(), encode(e)) for e in events]))
    messages = [("impressions", s.user_id.encode(), encode(s)) for s in impressions]
    messages += [("interactions", e.user_id.encode(), encode(e)) for e in [*responses, NEXT_BASKET]]
    messages += [("explanation-feedback", f.user_id.encode(), encode(f)) for f in feedback]

    state, feed = OpsState(), OpsFeed(kafka_settings)

    def latest_when(condition) -> dict:
        """The latest value of each metric of the worker (every model version for ``served.*``)."""
        def check():
            feed.poll(state, timeout_s=0.5)
            latest = {s.name: s.value for s in state.latest()
                      if set(s.labels) == {"worker"} or s.labels.get("model_version") == "all"}
            return condition(latest) and latest
        return check

    try:
        wait_for(latest_when(lambda m: m.get("baseline.purchases_evaluated") == len(events)), timeout_s=120,
                 message="the history measured")
        asyncio.run(send(kafka_settings, messages))
        # Everything consumed (topics and partitions are read at their own pace) …
        wait_for(latest_when(lambda m: m.get("baseline.purchases_evaluated") == len(events) + 1
                             and m.get("impressions") == 3 and m.get("impressions_responded") == 2),
                 timeout_s=120, message="every event measured")
        # … then event time moves on: the impressions close, and their next basket is complete.
        asyncio.run(send(kafka_settings, [("interactions", CLOSER.user_id.encode(), encode(CLOSER))]))
        latest = wait_for(latest_when(lambda m: "ctr" in m and m.get("served.impressions") == 3), timeout_s=30,
                          message="the CTR and served quality of closed impressions")
        alarms = wait_for(lambda: feed.poll(state, 0.5) >= 0 and state.alarms, timeout_s=30, message="a drift alarm")
    finally:
        feed.close()
    assert latest["ctr"] == pytest.approx(2 / 3) and latest["impressions_late_responses"] == 0
    assert 0 < latest["baseline.hr_at_10"] < 1
    assert f"{latest['served.ndcg_at_10']:.4f}" == SERVED_NDCG
    assert f"{latest['served.repeat_ndcg_at_10']:.4f}" == REPEAT_NDCG and latest["served.followed_share"] == 1.0
    assert any(a.signal == "miss@10" for a in alarms)
    prometheus = wait_for(lambda: _get(f"http://127.0.0.1:{worker.port}/metrics/"), timeout_s=10, message="/metrics")
    assert "recloop_online_baseline_hr_at_10" in prometheus and "recloop_drift_alarms_total" in prometheus
    assert 'recloop_online_served_ndcg_at_10{model_version="v1"' in prometheus

    frame = cli(kafka_settings, "monitor", "--once", "--worker-url", f"http://127.0.0.1:{worker.port}").stdout
    assert "served quality" in frame and SERVED_NDCG in frame
    assert "baseline.purchases_evaluated" in frame
    assert f"{len(events) + len(responses) + 2:,}" in frame  # accepted (/counts)
    assert kafka_settings.topic("interactions") in frame and "lag" in frame


def _get(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_report_and_dashboard_render_without_a_broker(tmp_path):
    """The drawing code on a hand-made state: every section, gate decisions reported as metrics too."""
    state = OpsState()
    for i in range(5):
        state.add_metric(MetricSnapshot("baseline.hr_at_10", 0.1 * i, 100, 1.7e9 + 60 * i))
        for version, served, repeat in (("all", 0.3, 0.25), ("v2", 0.31, 0.25), ("v1", 0.2, 0.24)):
            if version == "v2" and i < 2:
                continue  # v2 is scored from the third snapshot on
            labels = {"model_version": version}
            state.add_metric(MetricSnapshot("served.ndcg_at_10", served + 0.01 * i, 50, 1.7e9 + 60 * i, labels))
            state.add_metric(MetricSnapshot("served.repeat_ndcg_at_10", repeat, 50, 1.7e9 + 60 * i, labels))
            state.add_metric(MetricSnapshot("served.lift_over_repeat", served + 0.01 * i - repeat, 50, 1.7e9 + 60 * i,
                                            labels))
        state.add_metric(MetricSnapshot("explanation_helpful_rate", 0.5, 10, 1.7e9 + 60 * i, {"style": "popular"}))
    state.add_metric(MetricSnapshot("learner.gate", 0.0, 64, 1.7e9 + 200,
                                    {"decision": "refuse", "serving_version": "v1", "reason": "worse"}))
    state.add_metric(MetricSnapshot("learner.gate", 1.0, 64, 1.7e9 + 250, {"decision": "publish", "version": "v3"}))
    for i, seconds in enumerate(("1.5", "2.5")):  # annotation labels do not split a series
        state.add_metric(MetricSnapshot("learner.train_loss", 2.0 - i, 64, 1.7e9 + 60 * i, {"seconds": seconds}))
    state.alarms.append(DriftAlarm("kswin", "score", 0.9, 120, "warning", 1.7e9 + 100))
    state.apply("adapters", encode(adapter_update("v1", None, 1.7e9 + 30)))
    state.apply("drift", b"{not json")
    result = write_report(state, tmp_path)
    assert [p.name for p in result.images] == ["served.png", "baseline_ranking.png", "explanations.png", "learner.png",
                                               "drift.png"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| all | 0.3400 | 0.2500 | +0.0900 |" in summary and "| v1 | 0.2400 | 0.2400 | +0.0000 |" in summary
    assert "No adapter published." not in summary and "1 published, 1 refused." in summary
    assert summary.count("| learner.train_loss |") == 1

    console = Console(width=160, record=True)
    console.print(render(state, counts={"t.interactions": {"accepted": 10, "busy_s": 2.0}}, lag=None, title="t",
                         now=1.7e9 + 300))
    text = console.export_text()
    assert "▁▃▅▆█" in text  # baseline.hr_at_10's history 0.0 … 0.4 (and served NDCG@10's)
    served = text.index("served quality")
    assert served < text.index("all") < text.index("v2") < text.index("v1") < text.index("throughput")  # newest first
    assert "+0.0900" in text and "other online metrics" in text
    assert "refused" in text and "worse" in text and "v3" in text and "published" in text and "v1" in text
    assert "1 invalid ops messages skipped" in text
    assert "t.interactions" in text and "worker not reachable" not in text


def test_adapter_history_is_read_in_creation_order():
    state = OpsState()
    for version, created in (("v2", 2.0e9), ("v1", 1.9e9)):
        state.apply("adapters", encode(adapter_update(version, None, created)))
    assert [a.version for a in state.adapter_list()] == ["v1", "v2"]


def _worker_metrics(state: OpsState, feed: OpsFeed) -> dict:
    """The latest value of each of the worker's own metrics, and of the bandit's posteriors per (segment, style)."""
    feed.poll(state, timeout_s=0.5)
    latest = {}
    for s in state.latest():
        if set(s.labels) == {"worker"}:
            latest[s.name] = s.value
        elif s.name == "explanation_style_rate":
            latest[(s.labels["segment"], s.labels["style"])] = (round(s.value, 6), s.window)
    return latest


@pytest.mark.kafka
def test_monitoring_continues_across_a_graceful_stop_and_a_kill_9(kafka_settings, worker_factory, monkeypatch):
    """Metric totals and bandit posteriors continue after a restart instead of starting from zero, under the
    same worker label; after ``kill -9`` too, once a checkpoint covered what the worker had applied."""
    monkeypatch.setenv("RECLOOP_MONITOR_PUBLISH_INTERVAL_S", "1")
    monkeypatch.setenv("RECLOOP_MONITOR_RANK_EVERY", "1")
    monkeypatch.setenv("RECLOOP_LEARNER", "off")
    events = shop_events()  # 1,800 purchases in 600 baskets of 3 lines
    regular_votes = [ExplanationFeedback(f"vote-{i}", "regular-1", "r1", "item-1", f"x{i}", "history", helpful,
                                         T0 + i) for i, helpful in enumerate([True, True, True, False, True, False])]
    state, feed = OpsState(), OpsFeed(kafka_settings)

    def measured(purchases: int, votes: int, helpful: int) -> dict:
        # regular-1 bought 15 baskets before any vote: the "regular" segment, in a monitor that remembers that.
        rate = (1 + helpful) / (2 + votes)  # Beta(1, 1) prior
        return wait_for(lambda: (m := _worker_metrics(state, feed)).get("baseline.purchases_evaluated") == purchases
                        and m.get(("regular", "history")) == (round(rate, 6), votes) and m,
                        timeout_s=120, message=lambda: f"{purchases} purchases and {votes} votes measured "
                                                       f"(latest: {_worker_metrics(state, feed)})")

    def started() -> WorkerProcess:
        worker = worker_factory()
        # Faust has taken its partitions and sought to the committed offsets. Records already waiting when a
        # restarted worker joins can lose the first of a partition in Faust's recovery race (seen once here:
        # offset 270 of 384, never reached the ingest agent); that is ingest's problem, not monitoring's.
        wait_for(lambda: "[^Worker]: Ready" in worker.child.log_tail(1_000_000), timeout_s=90,
                 message="the worker ready")
        return worker

    def send_part(end: int, start: int, votes: list[ExplanationFeedback]) -> None:
        lines = events[start:end]
        asyncio.run(send(kafka_settings, [("interactions", e.user_id.encode(), encode(e)) for e in lines]))
        wait_for(lambda: _worker_metrics(state, feed).get("baseline.purchases_evaluated", 0) >= end,
                 timeout_s=120, message="the purchases measured")  # votes after purchases: a stable segment
        asyncio.run(send(kafka_settings, [("explanation-feedback", f.user_id.encode(), encode(f)) for f in votes]))

    try:
        first = started()
        send_part(900, 0, regular_votes[:4])
        measured(900, 4, 3)
        first.stop()  # SIGTERM: a graceful stop writes a last checkpoint

        second = started()
        assert "monitor restored from" in second.child.log_tail(20_000)
        send_part(1350, 900, regular_votes[4:5])
        measured(1350, 5, 4)  # not 450 and 1: continued
        time.sleep(3)  # a checkpoint follows each publication (every second here)
        second.child.process.kill()  # kill -9
        second.child.process.wait()

        third = started()
        assert "monitor restored from" in third.child.log_tail(20_000)
        send_part(1800, 1350, regular_votes[5:])
        latest = measured(1800, 6, 4)
    finally:
        feed.close()
    assert latest["impressions"] == 0 and latest[("regular", "history")] == (0.625, 6)
    assert state.workers == {socket.gethostname()}  # one row per worker, whatever its process
