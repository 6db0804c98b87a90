"""``recloop demo``: the whole loop on this machine, on real data.

Broker (started by the CLI) → topics → a worker (ingest + learning) → two serving workers →
a replay of the bundled Online Retail data in event time, while a shopper simulator closes the
loop: before each real basket it asks a serving worker for recommendations, clicks the ones the
shopper really buys in the following days, and rates the explanations. A live table shows the
stream, the model versions served and the simulated shoppers' behaviour. Ctrl-C stops everything
cleanly; at the end a report (PNG plots + summary) is written and its path printed.

Each run starts fresh on topics and state of its own, or continues the previous run (``--continue``);
the first line it prints says which (:mod:`ops.demo_runs`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ops.demo_runs import DemoRun, latest_run, new_run, remove_older_runs
from ops.processes import ChildProcess, free_port, get_json, recloop_env, wait_json
from ops.replay import OutgoingMessage, Pacer, file_messages, produce
from ops.simulator import ShopperSimulator, ShopperVisit, visits
from ops.topic_admin import create_topics
from streams import records
from streams.records import Interaction, Item
from streams.settings import KafkaSettings


@dataclass
class LoopStats:
    """What the simulated shoppers saw and did."""

    recommendations: int = 0
    searches: int = 0
    recommended_items: int = 0
    clicks: int = 0
    feedback: int = 0
    helpful: int = 0
    errors: int = 0
    #: event time of the last interaction replayed (where ``--continue`` picks up)
    replayed_through_ts: float | None = None
    versions: Counter = field(default_factory=Counter)
    helpful_by_style: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    #: the last 1,000 verdicts (ops.simulator.Verdict): the rate the explanation policy is moving (the total lags
    #: behind it), next to what the shoppers' preferred styles would have got wherever they were faithful
    recent: deque = field(default_factory=lambda: deque(maxlen=1000))

    def row(self) -> dict[str, str]:
        ctr = self.clicks / self.recommended_items if self.recommended_items else 0.0
        helpful = self.helpful / self.feedback if self.feedback else 0.0
        recent = sum(v.helpful for v in self.recent) / len(self.recent) if self.recent else 0.0
        oracle = sum(v.oracle_helpful for v in self.recent) / len(self.recent) if self.recent else 0.0
        return {"recommendations": f"{self.recommendations:,}", "searches": f"{self.searches:,}",
                "clicks": f"{self.clicks:,}", "CTR": f"{ctr:.2%}",
                "feedback": f"{self.feedback:,}", "helpful": f"{helpful:.1%}",
                "helpful (last 1,000)": f"{recent:.1%}", "oracle (last 1,000)": f"{oracle:.1%}",
                "errors": f"{self.errors:,}"}


class Dashboard:
    def __init__(self, settings: KafkaSettings, worker_url: str, server_urls: list[str]) -> None:
        self.settings, self.worker_url, self.server_urls = settings, worker_url, server_urls
        self.started = time.monotonic()

    def render(self, produced: int, total: int, loop: LoopStats) -> Group:
        counts = get_json(self.worker_url) or {}
        stream = Table(title=f"stream — replayed {produced:,}/{total:,} messages, "
                             f"{time.monotonic() - self.started:,.0f}s")
        for column in ("topic", "accepted", "duplicates", "dead-lettered", "events/s"):
            stream.add_column(column, justify="left" if column == "topic" else "right")
        for topic, c in counts.items():
            rate = c["accepted"] / c["busy_s"] if c.get("busy_s") else 0.0
            stream.add_row(topic, f"{c['accepted']:,}", f"{c['duplicates']:,}", f"{c['dead_lettered']:,}",
                           f"{rate:,.0f}")
        serving = Table(title="serving workers")
        for column in ("url", "status", "model version", "swaps", "rejected", "last swap ms", "scoring ms"):
            serving.add_column(column)
        for url in self.server_urls:
            health = get_json(f"{url}/healthz") or {}
            serving.add_row(url, str(health.get("status", "down")), str(health.get("model_version")),
                            str(health.get("swaps", "")), str(health.get("rejected_updates", "")),
                            milliseconds(health.get("last_swap_apply_ms")), milliseconds(health.get("scoring_ms")))
        shoppers = Table(title="simulated shoppers")
        row = loop.row()
        for column in row:
            shoppers.add_column(column, justify="right")
        shoppers.add_row(*row.values())
        return Group(stream, serving, shoppers)


def milliseconds(value: float | None) -> str:
    """A duration for the dashboard: three decimals, empty when unknown.

    >>> milliseconds(0.0012345678901234567), milliseconds(None)
    ('0.001', '')
    """
    return "" if value is None else f"{value:.3f}"


async def visit_and_react(client: httpx.AsyncClient, url: str, visit: ShopperVisit, simulator: ShopperSimulator,
                          stats: LoopStats, titles: dict[str, str], k: int = 10) -> None:
    """One simulated shopper visit: a search first in a share of visits, then recommendations; the shopper
    clicks and rates what each list showed through /feedback."""
    query = simulator.search_query(visit, titles)
    if query is not None:
        await show_and_react(client, url, "search", visit.search_params(query, k), visit, simulator, stats)
    await show_and_react(client, url, "recommend", visit.recommend_params(k), visit, simulator, stats)


async def show_and_react(client: httpx.AsyncClient, url: str, route: str, params: dict, visit: ShopperVisit,
                         simulator: ShopperSimulator, stats: LoopStats) -> None:
    """Ask one list route, then click and rate what it showed."""
    try:
        response = await client.get(f"{url}/{route}", params=params)
        response.raise_for_status()
        recommendation = response.json()
    except (httpx.HTTPError, ValueError):
        stats.errors += 1
        return
    if route == "search":
        stats.searches += 1
    else:
        stats.recommendations += 1
    stats.recommended_items += len(recommendation.get("items", []))
    stats.versions[recommendation.get("model_version")] += 1
    events, verdicts = simulator.react_scored(visit, recommendation)
    stats.recent.extend(verdicts)
    for event in events:
        body = orjson.dumps({k: v for k, v in records.to_dict(event).items() if v is not None})
        try:
            (await client.post(f"{url}/feedback", content=body,
                               headers={"content-type": "application/json"})).raise_for_status()
        except httpx.HTTPError:
            stats.errors += 1
            continue
        if isinstance(event, Interaction):
            stats.clicks += 1
        else:
            stats.feedback += 1
            stats.helpful += event.helpful


def by_timestamp(messages: list[OutgoingMessage]) -> list[tuple[float, list[OutgoingMessage]]]:
    groups: dict[float, list[OutgoingMessage]] = defaultdict(list)
    for message in messages:
        groups[message.ts].append(message)
    return sorted(groups.items())


async def drive(settings: KafkaSettings, messages: list[OutgoingMessage], server_urls: list[str],
                dashboard: Dashboard, live: Live, stats: LoopStats, *, speedup: float | None, seed: int) -> None:
    items = [m for m in messages if m.kind == "item"]
    events = [m for m in messages if m.kind != "item"]
    purchases = [records.decode(Interaction, m.value) for m in events]
    visits_at: dict[float, list[ShopperVisit]] = defaultdict(list)
    for visit in visits(purchases):
        visits_at[visit.ts].append(visit)
    simulator = ShopperSimulator(seed=seed, preference="segment")  # a taste the per-segment policy can learn
    titles = {decoded.item_id: decoded.title for decoded in (records.decode(Item, m.value) for m in items)}
    produced = [0]
    servers = itertools.cycle(server_urls)
    pacer = Pacer(speedup=speedup)
    await produce(items, settings, on_progress=lambda n: produced.__setitem__(0, produced[0] + n))
    last_frame = 0.0
    async with httpx.AsyncClient(timeout=30) as client:
        for ts, group in by_timestamp(events):
            delay = pacer.delay(ts)
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.gather(*(visit_and_react(client, next(servers), visit, simulator, stats, titles)
                                   for visit in visits_at.get(ts, [])))
            await produce(group, settings, on_progress=lambda n: produced.__setitem__(0, produced[0] + n))
            stats.replayed_through_ts = ts
            if time.monotonic() - last_frame > 1.0:
                live.update(await asyncio.to_thread(dashboard.render, produced[0], len(messages), stats))
                last_frame = time.monotonic()
    live.update(await asyncio.to_thread(dashboard.render, produced[0], len(messages), stats))


def choose_run(settings: KafkaSettings, *, resume: bool, console: Console) -> DemoRun:
    """The previous run when ``resume`` and there is one, else a fresh run; says which on the console."""
    previous = latest_run(settings) if resume else None
    if previous is not None:
        since = (datetime.fromtimestamp(previous.replayed_through_ts, UTC).isoformat()
                 if previous.replayed_through_ts is not None else "the start")
        console.print(f"continuing demo run {previous.run_id}: its topics ({previous.topic_prefix}.*), worker state "
                      f"and adapters ({previous.directory}); replaying the interactions from {since} on")
        return previous
    run = new_run(settings)
    console.print(f"{'no earlier demo run to continue: ' if resume else ''}starting fresh: demo run {run.run_id}, "
                  f"topics {run.topic_prefix}.*, state in {run.directory} (`recloop demo --continue` continues it)")
    return run


def run_demo(settings: KafkaSettings, *, data: Path, limit: int | None, speedup: float | None, tiny: bool,
             servers: int, report_dir: Path, console: Console, resume: bool = False, seed: int = 0) -> int:
    run = choose_run(settings, resume=resume, console=console)
    removed = remove_older_runs(settings)
    if removed:
        console.print(f"removed {len(removed)} older demo run(s): {', '.join(r.run_id for r in removed)}")
    settings = run.settings(settings)
    results = create_topics(settings)
    console.print(f"topics ready: {', '.join(r.name for r in results)}")
    messages = file_messages(data, settings, since=run.replayed_through_ts, limit=limit)
    home = run.directory
    # the replay runs far faster than event time: partitions reach the worker hours of event time apart
    # and a decision every 50 held-out baskets (200 by default), so a short demo shows versions being served
    env = recloop_env(settings, RECLOOP_DEMO="1", RECLOOP_BASKET_LATENESS_S="86400",
                      RECLOOP_LEARNER_WINDOW_BASKETS=os.environ.get("RECLOOP_LEARNER_WINDOW_BASKETS", "50"),
                      **({"RECLOOP_LEARNER_TINY": "1"} if tiny else {}))
    worker_port = free_port()
    worker = ChildProcess(["worker"], {**env, "RECLOOP_WORKER_WEB_PORT": str(worker_port)}, home / "worker.log")
    ports = [free_port() for _ in range(servers)]
    serving = [ChildProcess(["serve", "--port", str(port), *(["--tiny"] if tiny else [])], env,
                            home / f"serve-{i}.log") for i, port in enumerate(ports)]
    children = [worker, *serving]
    worker_url = f"http://127.0.0.1:{worker_port}/counts/"
    server_urls = [f"http://127.0.0.1:{port}" for port in ports]
    stats = LoopStats()
    try:
        for child in children:
            child.start()
        console.print(f"starting a worker and {servers} serving workers (logs in {home}) …")
        wait_json(worker_url, worker, timeout_s=180)
        for url, child in zip(server_urls, serving, strict=True):
            wait_json(f"{url}/healthz", child, timeout_s=300)
        dashboard = Dashboard(settings, worker_url, server_urls)
        with Live(console=console, refresh_per_second=2) as live:
            asyncio.run(drive(settings, messages, server_urls, dashboard, live, stats, speedup=speedup, seed=seed))
        console.print(f"served {stats.recommendations:,} recommendations from versions {dict(stats.versions)}")
        return write_report(settings, report_dir, console)
    except KeyboardInterrupt:
        console.print("stopping …")
        return 130
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        run.save(stats.replayed_through_ts)


def write_report(settings: KafkaSettings, out: Path, console: Console) -> int:
    """Write the report of what the demo's topics recorded; prints where it is."""
    report = ChildProcess(["report", "--out", str(out)], recloop_env(settings), settings.home / "report.log")
    report.start()
    code = report.process.wait(timeout=600)
    if code != 0:
        console.print(f"[yellow]report failed (exit {code}):[/]\n{report.log_tail()}")
        return code
    console.print(f"report written to {out.resolve()}")
    return 0
