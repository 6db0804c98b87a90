"""``recloop bench faults [--quick]``: kill things, forge things, count what was lost, trained twice or served wrong.

Against the real local broker, on topics and a home of its own (:func:`ops.topic_admin.fresh_run_topics`),
with the seeded tiny encoder (faults, not ranking quality, are measured; the learner's code path is the
same as with MiniLM). One serving worker answers ``/recommend`` for a set of shoppers all the time
(:class:`Hammer`); every answer that is not a 200 is a serving error.

1. **Worker kills.** The bundled history is produced in chunks; after each of the first ``kills`` chunks,
   at a random moment while the worker is busy with it, the worker gets ``kill -9`` and is started again
   with the same identity (app id, home, worker id). Restart-to-ready (``restart_ready_s``) is the time from
   the new process's start until it consumes again (``/ready/``: in its group, tables recovered, not
   rebalancing); ``learner_ready_s`` until its learner has also loaded its checkpoint (a second process that
   imports torch). The benchmark's worker is a static member of its consumer group
   (``RECLOOP_WORKER_STATIC_MEMBERSHIP=1``, :func:`streams.app.create_app`), so the broker hands its partitions
   back at once instead of expiring the dead member's session first (30 s); without it, expect ~35 s. At the
   end the learner's input topic must hold every valid interaction and its last checkpoint must cover the whole
   input:

   - ``lost``: valid interactions produced that never reached the learner's checkpointed input (must be 0);
   - ``duplicates_forwarded``: interactions forwarded to the learner more than once (a crash between the
     forward and the upstream commit: at-least-once);
   - ``duplicates_trained``: of those, how many the learner learned twice: it skips an event id it learned
     within its last ``RECLOOP_LEARNER_DEDUP_WINDOW`` (100,000) events, and its checkpoint restores that
     memory with the rest of its state, so this stays 0 unless a redelivery comes more than that many events
     late;
   - ``versions_strictly_increasing``: the adapter versions on the topic are unique and their numbers grow.
2. **Forged adapters** (:mod:`ops.forgery`): every kind is published to the topic; the serving worker must
   reject and count each (``/healthz`` ``rejected_updates``) and keep serving the version it had.
3. **A serving worker killed during a swap**: a second serving worker gets ``kill -9`` right after a new
   version is published; the first keeps answering (its errors count), and the second, restarted, serves
   the newest version.
4. **Fuzzing** (:mod:`ops.fuzz`): ``/recommend`` and ``/feedback`` of the running serving worker, over HTTP,
   against its own OpenAPI document with every schemathesis check; the record parsers with hypothesis.
   ``fuzz_5xx``, crashes, hangs and schema violations must be 0.

5. **Broker stop/start** (``--broker-restart``, local broker only): during the last chunk of the replay the
   broker is stopped and started again 3 s later; the replay, the worker and the serving workers must carry on
   by themselves (``broker_restart``: outage seconds, ``replay_recovered``), and the loss accounting of
   scenario 1 covers the events produced around it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path

import httpx

from learner.adapter_store import version_sequence
from learner.settings import LearnerSettings
from ops.adapters import send_raw_updates
from ops.forgery import FORGERY_KINDS, forgeries, renumbered
from ops.fuzz import fuzz_api, fuzz_records
from ops.kafka_broker import LocalKafka
from ops.kafka_io import read_messages
from ops.processes import ChildProcess, demo_key_unless_configured, free_port, get_json, recloop_env, wait_json
from ops.replay import OutgoingMessage, Pacer, file_messages, produce
from ops.topic_admin import delete_topics, fresh_run_topics
from streams.learning import open_envelope
from streams.records import AdapterUpdate, Interaction, InvalidRecord, decode
from streams.settings import KafkaSettings
from streams.topics import MODEL_UPDATES

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"

#: The learner's settings in this benchmark: small windows so versions are published throughout, frequent
#: checkpoints so the end of the run does not wait for the 30 s default.
LEARNER_ENV = {"RECLOOP_LEARNER_TINY": "1", "RECLOOP_LEARNER_WINDOW_BASKETS": "8",
               "RECLOOP_LEARNER_BATCH_SIZE": "300", "RECLOOP_LEARNER_BATCH_WITHIN_S": "0.5",
               "RECLOOP_LEARNER_CHECKPOINT_INTERVAL_S": "2"}


class Hammer(threading.Thread):
    """Asks every serving worker in ``urls`` for recommendations in a loop; counts answers and errors per url."""

    def __init__(self, urls: list[str], users: list[str]) -> None:
        super().__init__(daemon=True, name="faults-hammer")
        self.urls, self.users = list(urls), users
        self.ok: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self._stop_event = threading.Event()
        self._paused: set[str] = set()

    def pause(self, url: str) -> None:
        """Stop asking ``url`` (a worker about to be killed on purpose)."""
        self._paused.add(url)

    def resume(self, url: str) -> None:
        self._paused.discard(url)

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            n = 0
            while not self._stop_event.is_set():
                for url in [u for u in self.urls if u not in self._paused]:
                    user = self.users[n % len(self.users)]
                    n += 1
                    try:
                        response = client.get(f"{url}/recommend", params={"user_id": user, "k": 10})
                        failed = None if response.status_code == 200 else f"HTTP {response.status_code}"
                    except httpx.HTTPError as exc:
                        failed = f"{exc.__class__.__name__}: {exc}"
                    if failed is None:
                        self.ok[url] += 1
                    else:
                        self.errors[url] += 1
                        if len(self.examples) < 5:
                            self.examples.append(f"{url}: {failed}")
                self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


class Restartable:
    """A ``recloop`` command that can be killed with SIGKILL and started again as the same process would be."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port: int, ready_path: str) -> None:
        self.args, self.env, self.log_path, self.port = args, env, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.child: ChildProcess | None = None

    def start(self, ready=lambda page: True, timeout_s: float = 180.0) -> float:
        """Start it and wait until ``ready_path`` answers a page that ``ready`` accepts; the seconds that took."""
        self.child = ChildProcess(self.args, self.env, self.log_path).start()
        return self.wait_for(self.ready_path, ready, timeout_s)

    def wait_for(self, path: str, ready, timeout_s: float = 180.0) -> float:
        """Seconds until ``path`` answers (200) a page that ``ready`` accepts."""
        started = time.monotonic()
        wait_json(self.url + path, self.child, timeout_s=timeout_s, accept=ready, interval_s=0.1)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.child.process.kill()
        self.child.process.wait(timeout=30)

    def page(self, path: str) -> dict:
        return get_json(self.url + path) or {}

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


def _learner_ready(page: dict) -> bool:
    return page.get("steps") is not None


def _shoppers(messages: list[OutgoingMessage], n: int) -> list[str]:
    users = sorted({decode(Interaction, m.value).user_id for m in messages if m.kind == "purchase"})
    return users[:n]


def _cuts(rng: random.Random, n: int, kills: int) -> list[int]:
    """Where to cut ``n`` events into ``kills + 1`` chunks: random, none shorter than a tenth of an even share."""
    least = max(1, n // (kills + 1) // 10)
    points = sorted(rng.sample(range(least, n - least), kills)) if kills else []
    return [0, *points, n]


def restart_broker_during(settings: KafkaSettings, broker: LocalKafka, chunk: list[OutgoingMessage],
                          rng: random.Random, down_s: float = 3.0) -> dict:
    """Replay ``chunk`` at a steady rate and stop the broker in the middle of it; start it again ``down_s`` later.

    The replay is not restarted: its producer must ride the outage out (it retries for up to a minute)."""
    outcome: dict = {}

    def replay() -> None:
        try:
            asyncio.run(produce(chunk, settings, pacer=Pacer(rate=max(200.0, len(chunk) / 4))))
        except Exception as exc:  # recorded: the benchmark says the replay did not recover
            outcome["replay_error"] = f"{exc.__class__.__name__}: {exc}"

    producer = threading.Thread(target=replay, name="faults-replay")
    producer.start()
    time.sleep(rng.uniform(0.5, 1.5))
    started = time.monotonic()
    broker.stop()
    time.sleep(down_s)
    broker.start(timeout_s=600)  # a broker holding thousands of partitions takes minutes to start on 2 cores
    outcome["broker_outage_s"] = round(time.monotonic() - started, 1)
    producer.join()
    outcome["replay_recovered"] = "replay_error" not in outcome
    return outcome


def kill_and_count(settings: KafkaSettings, worker: Restartable, events: list[OutgoingMessage], *, kills: int,
                   rng: random.Random, timeout_s: float, broker: LocalKafka | None = None) -> dict:
    """Scenario 1: produce in chunks, ``kill -9`` the worker during each but the last, restart; with a local
    ``broker``, stop and start it during the last chunk; then count what reached the learner."""
    cuts = _cuts(rng, len(events), kills)
    ready_s: list[float] = []
    learner_s: list[float] = []
    outage: dict = {}
    for i in range(len(cuts) - 1):
        chunk = events[cuts[i]:cuts[i + 1]]
        if broker is not None and i == len(cuts) - 2:
            outage = restart_broker_during(settings, broker, chunk, rng)
        else:
            asyncio.run(produce(chunk, settings))
        if i < kills:
            time.sleep(rng.uniform(0.2, 2.5))  # somewhere in the middle of ingesting and learning the chunk
            worker.kill()
            ready_s.append(worker.start())  # consuming again (``/ready/``)
            learner_s.append(ready_s[-1] + worker.wait_for("/learner/", _learner_ready))
    expected = {decode(Interaction, m.value).event_id for m in events if m.kind != "item"}
    topic = worker.page("/learner/")["topic"]
    deadline = time.monotonic() + timeout_s
    while True:  # serving's impressions keep flowing to the learner too: wait for what was produced here
        records = [open_envelope(k, v) for k, v in asyncio.run(read_messages(settings, topic))]
        status = worker.page("/learner/")
        through = status.get("checkpointed_through")
        learned = records[: through + 1] if through is not None else []  # one partition: index = offset
        forwarded = Counter(r.event_id for r in learned if isinstance(r, Interaction))
        if set(forwarded) >= expected:
            break
        if time.monotonic() > deadline:
            log.warning("the learner's checkpoint does not cover every event after %.0fs: %s", timeout_s, status)
            break
        time.sleep(2.0)
    reached = {r.event_id for r in records if isinstance(r, Interaction)}
    duplicates = sum(count - 1 for count in forwarded.values())
    updates = published_updates(settings)
    numbers = [version_sequence(u.version) for u in updates]
    return {"events": len(expected), "kills": kills, "lost": len(expected - set(forwarded)),
            "lost_never_forwarded": len(expected - reached),
            "duplicates_forwarded": duplicates, "duplicates_trained": duplicates - int(status.get("redelivered", 0)),
            "restart_ready_s": [round(s, 1) for s in ready_s],
            "restart_ready_s_p50": round(statistics.median(ready_s), 1) if ready_s else None,
            "restart_ready_s_max": round(max(ready_s), 1) if ready_s else None,
            "learner_ready_s": [round(s, 1) for s in learner_s],
            "versions": len(updates),
            "versions_strictly_increasing": all(b > a for a, b in pairwise(numbers)) and len(updates) > 0,
            "broker_restart": outage or None}


def published_updates(settings: KafkaSettings) -> list[AdapterUpdate]:
    """The readable records of the updates topic, in publication order (forged garbage on it is skipped)."""
    out = []
    for _, value in asyncio.run(read_messages(settings, settings.topic(MODEL_UPDATES.name))):
        try:
            out.append(decode(AdapterUpdate, value))
        except InvalidRecord:
            continue
    return out


def publish_raw(settings: KafkaSettings, raws: list[bytes]) -> None:
    asyncio.run(send_raw_updates(settings, raws))


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out waiting for {what}")


def forge(settings: KafkaSettings, serving: Restartable, key: bytes) -> dict:
    """Scenario 2: every forgery on the topic; the serving worker rejects and counts each, keeps its version."""
    updates = published_updates(settings)
    current = _wait(lambda: serving.page("/healthz").get("model_version") == updates[-1].version and updates[-1],
                    60, f"serving to run {updates[-1].version}")
    before = serving.page("/healthz")["rejected_updates"]
    newer = f"v{version_sequence(current.version) + 100:06d}"
    forged = forgeries(settings.home / "adapters" / current.version, key, newer=newer, older=updates[0],
                       work=settings.home / "forged")
    publish_raw(settings, list(forged.values()))
    _wait(lambda: serving.page("/healthz").get("rejected_updates", 0) - before >= len(forged), 60,
          f"serving to reject {len(forged)} forged updates")
    time.sleep(1.0)  # anything still in flight would show now
    health = serving.page("/healthz")
    return {"forged_total": len(forged), "forged_rejected": health["rejected_updates"] - before,
            "forged_kinds": sorted(FORGERY_KINDS), "version_kept": health["model_version"] == current.version}


def kill_during_swap(settings: KafkaSettings, survivor: Restartable, victim: Restartable, hammer: Hammer,
                     key: bytes) -> dict:
    """Scenario 3: ``kill -9`` a serving worker right after a new version is published; restart it."""
    from learner import artifacts
    from streams.records import encode

    updates = published_updates(settings)
    newest = max(updates, key=lambda u: version_sequence(u.version))
    genuine = [u for u in updates if (settings.home / "adapters" / u.version).is_dir()][-1]
    version = f"v{version_sequence(newest.version) + 1000:06d}"
    fresh = renumbered(settings.home / "adapters" / genuine.version, version, settings.home / "swap")
    errors_before = hammer.errors[survivor.url]
    hammer.pause(victim.url)
    publish_raw(settings, [encode(artifacts.make_update(fresh, key))])
    time.sleep(0.05)  # the victim is reading or building the update now
    victim.kill()
    ready_s = victim.start(lambda page: page.get("model_version") == version, timeout_s=180)
    hammer.resume(victim.url)
    _wait(lambda: survivor.page("/healthz").get("model_version") == version, 60, f"the survivor to serve {version}")
    return {"survivor_errors": hammer.errors[survivor.url] - errors_before,
            "restarted_serves_newest": True, "restarted_ready_s": round(ready_s, 1)}


def run_bench_faults(base: KafkaSettings, *, quick: bool = False, seed: int = 0,
                     broker: LocalKafka | None = None) -> dict:
    """The whole benchmark; ``broker``: the local broker to stop and start mid-stream (None: that scenario is
    skipped, e.g. against an external cluster)."""
    rng = random.Random(seed)
    settings = fresh_run_topics(base, "faults")
    demo = demo_key_unless_configured()
    key = LearnerSettings(demo=bool(demo)).signing_key()
    messages = file_messages(DATA, settings, limit=6000 if quick else 40_000)
    items = [m for m in messages if m.kind == "item"]
    events = [m for m in messages if m.kind != "item"]
    kills = 2 if quick else 5
    env = recloop_env(settings, **demo, **LEARNER_ENV)
    app_id = f"faults-{uuid.uuid4().hex[:6]}"
    worker_port = free_port()
    worker = Restartable(["worker"], {**env, "RECLOOP_WORKER_APP_ID": app_id,
                                      "RECLOOP_WORKER_WEB_PORT": str(worker_port),
                                      "RECLOOP_WORKER_STATIC_MEMBERSHIP": "1"},
                         settings.home / "worker.log", worker_port, "/ready/")
    servers = []
    for name in ("serve-a", "serve-b"):
        port = free_port()
        servers.append(Restartable(["serve", "--tiny", "--port", str(port)], env, settings.home / f"{name}.log",
                                   port, "/healthz"))
    hammer = Hammer([s.url for s in servers], _shoppers(events, 40))
    result: dict = {"bench": "faults", "quick": quick, "seed": seed}
    started = time.monotonic()
    try:
        for server in servers:
            server.start(lambda page: page.get("status") == "ok")
        worker.start()
        worker.wait_for("/learner/", _learner_ready)
        hammer.start()
        asyncio.run(produce(items, settings))
        result |= kill_and_count(settings, worker, events, kills=kills, rng=rng,
                                 timeout_s=180 if quick else 600, broker=broker)
        result |= forge(settings, servers[0], key)
        result["serving_kill_during_swap"] = kill_during_swap(settings, servers[0], servers[1], hammer, key)
        fuzzed = fuzz_api(servers[0].url, examples=40 if quick else 200)  # the real HTTP server, all checks
        result |= {**fuzzed, **fuzz_records(examples=40 if quick else 200)}
    finally:
        hammer.stop()
        for process in (worker, *servers):
            process.stop()
        delete_topics(settings, app_id=f"{app_id}-{settings.topic_prefix}")
    result["serving_requests"] = sum(hammer.ok.values()) + sum(hammer.errors.values())
    result["serving_errors"] = sum(hammer.errors.values())
    result["serving_error_examples"] = hammer.examples
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result
