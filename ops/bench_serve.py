"""``recloop bench serve [--route search]``: /recommend (or /search) latency and throughput while adapters are
hot-swapped every second.

Setup: the whole Online Retail catalogue and the most recent ``interactions`` purchases go on
fresh topics; a first adapter (with its item vectors, encoded here once) is published; then a
real ``recloop serve`` process starts with the real MiniLM base (``--tiny`` for a quick run) and
boots on it. Measured: ``concurrency`` clients request ``/recommend?k=10`` for ``duration_s`` seconds
(known shoppers, and 10% shoppers the worker has never seen) while a new adapter version is
published every ``swap_every_s`` seconds. Latency is end to end, as the clients see it.

With ``route="search"`` the clients ask ``/search?q=&user_id=&k=10`` instead, ``q`` one of the catalogue's
product types (the last word of a title that at least 20 titles share, as ``recloop eval --search`` asks),
two words in one query of four (a colour or material before it).

``boot_s`` is how long the serving worker took to serve after its start, reading the whole history from the
topics; then it is stopped, and ``boot_from_snapshot_s`` is the same for a restart, which reads the snapshot the
first one left (:mod:`serving.snapshot`) and only the tail of the topics.

``swap_apply_ms`` is the longest swap the worker performed (the reference assignment);
``swap_build_ms`` the mean time it spent building a version off to the side (decode, verify,
map shipped vectors) — the part that must not block requests, and doesn't, as p99 shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from learner import artifacts
from learner.encoder import load_base, tiny_bert
from learner.model import RankingModel
from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from ops.replay import file_messages, produce
from ops.topic_admin import delete_topics, fresh_run_topics
from streams.records import encode
from streams.settings import KafkaSettings
from streams.topics import MODEL_UPDATES

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"
KEY = "bench-serve-key"


class AdapterFactory:
    """New adapter versions for the bench: the same item vectors (LoRA stays identity), a different head each."""

    def __init__(self, model: RankingModel, root: Path) -> None:
        self.model = model
        self.root = root
        self.rng = torch.Generator().manual_seed(0)
        self.published = 0

    def next(self) -> bytes:
        self.published += 1
        with torch.no_grad():
            for param in self.model.head.parameters():
                param.add_(torch.randn(param.shape, generator=self.rng) * 0.01)
        # versions strictly increase, or serving refuses them
        path = artifacts.save_adapter(self.model, self.root, f"v{self.published:06d}", with_item_vectors=True)
        return encode(artifacts.make_update(path, KEY))


async def publish(settings: KafkaSettings, producer, raw: bytes) -> None:
    await (await producer.send(settings.topic(MODEL_UPDATES.name), raw, key=b"adapter"))


def search_queries(titles: list[str], min_items: int = 20) -> list[str]:
    """Queries a shop's search box gets: product types (the last word of titles, shared by ``min_items``), and
    a quarter of them two words (the word before the type, from the last title that has one).

    >>> search_queries(["RED BAG", "BLUE BAG", "RED MUG"], min_items=2)
    ['bag', 'bag', 'bag', 'blue bag']
    """
    from collections import Counter

    from learner.search import words

    last = Counter(ws[-1] for ws in (words(t) for t in titles) if ws)
    kinds = sorted(w for w, n in last.items() if n >= min_items)
    pairs = {ws[-1]: f"{ws[-2]} {ws[-1]}" for ws in (words(t) for t in titles) if len(ws) > 1 and ws[-1] in kinds}
    return [q for kind in kinds for q in (kind, kind, kind, pairs.get(kind, kind))]


async def load(url: str, users: list[str], *, concurrency: int, duration_s: float, settings: KafkaSettings,
               factory: AdapterFactory, swap_every_s: float, server_pid: int, route: str = "recommend",
               queries: list[str] | None = None) -> dict:
    import aiohttp
    from aiokafka import AIOKafkaProducer

    latencies: list[float] = []
    errors: list[str] = []
    versions: set[str] = set()
    rng = random.Random(1)
    deadline = 0.0

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            params = {"user_id": rng.choice(users), "k": "10"}
            if queries:
                params["q"] = rng.choice(queries)
            start = time.perf_counter()
            try:
                async with session.get(f"{url}/{route}", params=params) as response:
                    body = await response.json()
                    if response.status != 200 or len(body["items"]) != 10:
                        errors.append(f"{response.status}: {str(body)[:200]}")
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - start)
            versions.add(body["model_version"])

    async def swapper(producer) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await publish(settings, producer, await asyncio.to_thread(factory.next))
            next_at = min(started + swap_every_s, deadline)
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    producer = AIOKafkaProducer(**settings.aiokafka_options(), max_request_size=64 * 1024 * 1024)
    await producer.start()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.perf_counter() + min(5.0, duration_s / 4)  # warm-up, not measured
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
            latencies.clear()
            errors.clear()
            cpu_before, load_before = process_cpu_s(server_pid), os.getloadavg()[0]
            started = time.perf_counter()
            deadline = started + duration_s
            await asyncio.gather(swapper(producer), *(client(session) for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            cpu_used, load_after = process_cpu_s(server_pid) - cpu_before, os.getloadavg()[0]
    finally:
        await producer.stop()
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
            "rps": round(len(latencies) / elapsed, 1), "versions_seen_by_clients": len(versions),
            # the worker's own CPU per request, and how busy the (shared) machine was meanwhile
            "server_cpu_ms_per_request": round(cpu_used * 1000 / max(1, len(latencies)), 2),
            "load_average": [round(load_before, 2), round(load_after, 2)]}


def wait_all_ready(url: str, processes: int, server: ChildProcess, timeout_s: float = 600.0) -> dict:
    """Ask /healthz on new connections until ``processes`` different processes said they serve."""
    import httpx

    ready: dict[int, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(ready) < processes:
        if time.monotonic() > deadline or not server.alive:
            raise RuntimeError(f"{len(ready)} of {processes} serving processes ready:\n{server.log_tail()}")
        try:
            health = httpx.get(f"{url}/healthz", timeout=5).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if health.get("status") == "ok":
            ready[health["pid"]] = health
    return next(iter(ready.values()))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process and its live descendants have used so far (Linux): the serving
    processes of ``recloop serve --processes N`` are children of the one started."""
    stats: dict[int, list[str]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(path.parent.name)] = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue  # gone meanwhile
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, fields in stats.items() if int(fields[1]) == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def run_bench_serve(base_settings: KafkaSettings, *, duration_s: float = 30.0, concurrency: int = 8,
                    swap_every_s: float = 1.0, interactions: int = 100_000, tiny: bool = False,
                    route: str = "recommend", processes: int = 1) -> dict:
    import httpx

    torch.set_num_threads(1)
    settings = fresh_run_topics(base_settings, "bench")
    home = settings.home
    messages = file_messages(DATA, settings)
    items = [m for m in messages if m.kind == "item"]
    events = [m for m in messages if m.kind != "item"][-interactions:]
    asyncio.run(produce(items + events, settings))
    users = sorted({m.key.decode() for m in events if m.kind == "purchase"})
    users = users + [f"new-shopper-{i}" for i in range(max(1, len(users) // 10))]

    started = time.perf_counter()
    base = tiny_bert(seed=0) if tiny else load_base()
    model = RankingModel(base)
    from streams.records import Item, decode

    titles = sorted({decode(Item, m.value).title for m in items})
    model.set_catalogue(titles)  # serving keys vectors by text
    queries = search_queries(titles) if route == "search" else None
    encode_s = time.perf_counter() - started
    factory = AdapterFactory(model, home)

    async def first() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**settings.aiokafka_options(), max_request_size=64 * 1024 * 1024)
        await producer.start()
        try:
            await publish(settings, producer, factory.next())
        finally:
            await producer.stop()

    asyncio.run(first())
    env = recloop_env(settings, RECLOOP_ADAPTER_KEY=KEY, RECLOOP_LOG_LEVEL=os.environ.get("RECLOOP_LOG_LEVEL",
                                                                                            "WARNING"))

    def start(name: str) -> tuple[ChildProcess, str, float, dict]:
        """A serving worker, and the seconds until it (every process of it) serves."""
        port = free_port()
        args = ["serve", "--port", str(port), "--processes", str(processes)] + (["--tiny"] if tiny else [])
        started = time.perf_counter()
        server = ChildProcess(args, env, home / f"{name}.log").start()
        url = f"http://127.0.0.1:{port}"
        health = wait_json(f"{url}/healthz", server, timeout_s=600)
        if processes > 1:  # every process has booted once connections to the port reach them all
            health = wait_all_ready(url, processes, server)
        return server, url, time.perf_counter() - started, health

    server, url, boot_s, health = start("serve")
    try:
        swaps_before = health["swaps"]
        result = asyncio.run(load(url, users, concurrency=concurrency, duration_s=duration_s, settings=settings,
                                  factory=factory, swap_every_s=swap_every_s, server_pid=server.process.pid,
                                  route=route, queries=queries))
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        server.stop()  # graceful: it leaves its snapshot (serving.snapshot) for the restart
        server, _, restart_s, restarted = start("restart")
        if not restarted.get("booted_from_snapshot"):
            raise RuntimeError(f"the restarted serving worker did not boot from its snapshot: {restarted}")
    finally:
        server.stop()
        delete_topics(settings)
    builds = _metric(metrics, 'recloop_serving_state_build_seconds_count{cause="adapter"}')
    build_sum = _metric(metrics, 'recloop_serving_state_build_seconds_sum{cause="adapter"}')
    targets = ({"p50_ms": 30, "p99_ms": 100, "errors": 0} if route == "search"
               else {"p50_ms": 20, "p99_ms": 60, "rps": 400, "errors": 0, "swap_apply_ms": 50})
    return {"bench": "serve", "route": route, "processes": processes, "queries": len(set(queries or ())),
            "base": base.name, "items": health["items"], "interactions": len(events),
            "concurrency": concurrency, "duration_s": duration_s, "k": 10,
            **{k: result[k] for k in ("p50_ms", "p99_ms", "mean_ms", "rps", "requests", "errors")},
            "swaps": health["swaps"] - swaps_before, "published": factory.published - 1,
            "swap_apply_ms": round(health["max_swap_apply_ms"], 4),
            "swap_build_ms": round(build_sum / builds * 1000, 1) if builds else None,
            "versions_seen_by_clients": result["versions_seen_by_clients"],
            "rejected_updates": health["rejected_updates"],
            # from the topics' beginning, then a restart from the snapshot the first left at its stop
            "boot_s": round(boot_s, 1), "boot_from_snapshot_s": round(restart_s, 1),
            "server_cpu_ms_per_request": result["server_cpu_ms_per_request"],
            "load_average": result["load_average"], "cpus": os.cpu_count(),
            "item_encode_s": round(encode_s, 1), "error_examples": result["error_examples"],
            "targets": targets}
