"""``recloop demo``: the whole pipeline on this machine, with live counts.

Broker (already started by the CLI) → topics → a worker process → a replay of the bundled
Online Retail data, while a live table shows what the worker accepted, recognised as
duplicate, or dead-lettered. Ctrl-C stops the worker cleanly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ops.processes import ChildProcess, free_port, get_json, recloop_env, wait_json
from ops.replay import ReplaySummary, file_messages, produce
from ops.topic_admin import create_topics
from streams.settings import KafkaSettings


def counts_table(counts: dict, produced: int, total: int, elapsed: float) -> Table:
    table = Table(title=f"recloop demo — replayed {produced:,}/{total:,} messages in {elapsed:,.0f}s")
    for column in ("topic", "accepted", "duplicates", "dead-lettered", "by type", "events/s"):
        table.add_column(column, justify="right" if column not in ("topic", "by type") else "left")
    for topic, c in counts.items():
        rate = c["accepted"] / c["busy_s"] if c.get("busy_s") else 0.0
        by_type = ", ".join(f"{k} {v:,}" for k, v in sorted(c.get("by_type", {}).items()))
        table.add_row(topic, f"{c['accepted']:,}", f"{c['duplicates']:,}", f"{c['dead_lettered']:,}", by_type,
                      f"{rate:,.0f}")
    return table


def run_demo(settings: KafkaSettings, *, data: Path, limit: int | None, speedup: float | None,
             console: Console) -> int:
    results = create_topics(settings)
    console.print(f"topics ready: {', '.join(r.name for r in results)}")
    messages = file_messages(data, settings, limit=limit)
    port = free_port()
    # The production consumer group: a second demo run resumes where the first stopped, and a
    # replay of events it already processed shows up as duplicates, not as new counts.
    worker = ChildProcess(["worker"], recloop_env(settings, RECLOOP_WORKER_WEB_PORT=str(port), RECLOOP_DEMO="1"),
                          settings.home / "demo" / "worker.log").start()
    url = f"http://127.0.0.1:{port}/counts/"
    console.print(f"worker starting (log: {worker.log_path}) …")
    produced = [0]
    summary: list[ReplaySummary] = []
    failure: list[BaseException] = []

    def replay() -> None:
        from ops.replay import Pacer

        try:
            summary.append(asyncio.run(produce(messages, settings, pacer=Pacer(speedup=speedup),
                                               on_progress=lambda n: produced.__setitem__(0, produced[0] + n))))
        except BaseException as exc:  # reported below; the demo must not hang on a failed replay
            failure.append(exc)

    try:
        wait_json(url, worker, timeout_s=120)
        started = time.monotonic()
        thread = threading.Thread(target=replay, name="replay", daemon=True)
        thread.start()
        events = sum(1 for m in messages if m.kind != "item")
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                counts = get_json(url) or {}
                live.update(counts_table(counts, produced[0], len(messages), time.monotonic() - started))
                if failure:
                    raise failure[0]
                done = counts.get(settings.topic("interactions"), {})
                if not thread.is_alive() and done.get("accepted", 0) + done.get("duplicates", 0) >= events:
                    break
                if not worker.alive:
                    console.print(f"[red]the worker exited:[/]\n{worker.log_tail()}")
                    return 1
                time.sleep(0.5)
        console.print(f"replay summary: {summary[0].as_dict() if summary else {}}")
        console.print("all replayed events were processed by the worker.")
        return 0
    except KeyboardInterrupt:
        console.print("stopping …")
        return 130
    finally:
        worker.stop()
