"""The ``recloop`` command line: one entry point for operators and engineers."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ops import logs
from streams.settings import KafkaSettings, WorkerSettings

app = typer.Typer(help="recloop: a streaming recommender that learns while it serves.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="Run the project's own single-node Kafka broker (KRaft).", no_args_is_help=True)
topics_app = typer.Typer(help="Manage the contract's topics.", no_args_is_help=True)
bench_app = typer.Typer(help="Performance benchmarks; each prints one JSON object.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


#: The secure local broker's client port (its controller: the next one), beside the plaintext one on 9092.
SECURE_PORT = 9094

SecureOption = Annotated[bool, typer.Option("--secure", help="The local broker in SASL_SSL mode (SCRAM-SHA-512 "
                                                             f"over TLS) on port {SECURE_PORT}")]


def local_broker(settings: KafkaSettings, secure: bool = False):
    from ops.kafka_broker import LocalKafka

    if secure:
        return LocalKafka(settings.home, port=SECURE_PORT, secure=True)
    port = int(settings.bootstrap.rsplit(":", 1)[1]) if not settings.uses_external_cluster else 9092
    return LocalKafka(settings.home, port=port)


def ensure_broker(settings: KafkaSettings) -> None:
    """Start the local broker unless an external cluster is configured; then check it answers."""
    from ops.kafka_broker import BrokerError, wait_until_reachable

    try:
        if settings.uses_external_cluster:
            wait_until_reachable(settings.bootstrap, timeout_s=30, options=settings.security_options())
        else:
            local_broker(settings).start()
    except BrokerError as exc:
        _fail(str(exc))


# ------------------------------------------------------------------ kafka


@kafka_app.command("start")
def kafka_start(secure: SecureOption = False) -> None:
    """Start the local broker (idempotent) and wait until it answers; --secure: SASL_SSL only, on port 9094."""
    settings = KafkaSettings()
    if secure:
        from ops.kafka_broker import BrokerError

        broker = local_broker(settings, secure=True)
        try:
            status = broker.start()
        except BrokerError as exc:
            _fail(str(exc))
        console.print(status.describe())
        client = broker.client_settings()
        password_file = broker.secrets.password_file(client.kafka_sasl_username)
        console.print("Point recloop at it with (the password stays in its file):")
        for name, value in [("RECLOOP_KAFKA_BOOTSTRAP", broker.bootstrap),
                            ("RECLOOP_KAFKA_SECURITY_PROTOCOL", client.kafka_security_protocol),
                            ("RECLOOP_KAFKA_SASL_MECHANISM", client.kafka_sasl_mechanism),
                            ("RECLOOP_KAFKA_SASL_USERNAME", client.kafka_sasl_username),
                            ("RECLOOP_KAFKA_SASL_PASSWORD_FILE", password_file),
                            ("RECLOOP_KAFKA_SSL_CAFILE", client.kafka_ssl_cafile)]:
            console.print(f"export {name}={value}", highlight=False, soft_wrap=True)
        return
    if settings.uses_external_cluster:
        console.print(f"RECLOOP_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: using that cluster, starting nothing")
        ensure_broker(settings)
        return
    from ops.kafka_broker import BrokerError

    try:
        status = local_broker(settings).start()
    except BrokerError as exc:
        _fail(str(exc))
    console.print(status.describe())


@kafka_app.command("stop")
def kafka_stop(secure: SecureOption = False) -> None:
    """Stop the local broker (--secure: the SASL_SSL one)."""
    stopped = local_broker(KafkaSettings(), secure=secure).stop()
    console.print("kafka stopped" if stopped else "kafka was not running")


@kafka_app.command("status")
def kafka_status(secure: SecureOption = False) -> None:
    """Show whether the local broker runs and answers (--secure: the SASL_SSL one)."""
    settings = KafkaSettings()
    if secure:
        status = local_broker(settings, secure=True).status()
        console.print(status.describe())
        raise typer.Exit(code=0 if status.reachable else 1)
    if settings.uses_external_cluster:
        from ops.kafka_broker import broker_reachable

        ok = broker_reachable(settings.bootstrap, options=settings.security_options())
        console.print(f"external cluster {settings.bootstrap}: {'answers' if ok else 'NOT reachable'}")
        raise typer.Exit(code=0 if ok else 1)
    status = local_broker(settings).status()
    console.print(status.describe())
    raise typer.Exit(code=0 if status.reachable else 1)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Download the Kafka jars with Maven (done by `start` too)."""
    from ops.kafka_broker import BrokerError

    broker = local_broker(KafkaSettings())
    try:
        broker.fetch()
    except BrokerError as exc:
        _fail(str(exc))
    console.print(f"Kafka jars ready in {broker.libs}")


# ------------------------------------------------------------------ topics


@topics_app.command("create")
def topics_create() -> None:
    """Create every contract topic that does not exist yet (idempotent)."""
    from ops.topic_admin import create_topics

    settings = KafkaSettings()
    ensure_broker(settings)
    for result in create_topics(settings):
        console.print(f"{'created' if result.created else 'exists '} {result.name} ({result.partitions} partitions)")


# ------------------------------------------------------------------ replay


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    from streams.records import InvalidRecord, _timestamp

    try:
        return _timestamp(value if not value.replace(".", "", 1).isdigit() else float(value), "time")
    except InvalidRecord as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def replay(
    source: Annotated[str, typer.Argument(help="A .parquet/.csv/.jsonl file, or topic:NAME to backfill from a topic")],
    since: Annotated[str | None, typer.Option(help="Only events at or after this time (ISO-8601 or epoch s)")] = None,
    until: Annotated[str | None, typer.Option(help="Only events before this time (ISO-8601 or epoch s)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many events")] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Events per second")] = None,
    speedup: Annotated[float | None, typer.Option(min=0.001, help="Replay event time this many times faster")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Write into this topic instead of the contract topics")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
) -> None:
    """Replay history onto the topics in event-time order; safe to run twice (idempotent event ids)."""
    from ops.progress import event_progress
    from ops.replay import replay as run_replay

    settings = KafkaSettings()
    if rate is not None and speedup is not None:
        raise typer.BadParameter("choose --rate or --speedup, not both")
    ensure_broker(settings)
    with event_progress(enabled=not quiet and sys.stderr.isatty(), console=console) as factory:
        try:
            summary = asyncio.run(run_replay(source, settings, since=_parse_time(since), until=_parse_time(until),
                                             limit=limit, rate=rate, speedup=speedup, target=to,
                                             progress_factory=factory))
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    print(json.dumps(summary.as_dict(), indent=2))


# ------------------------------------------------------------------ worker


@app.command()
def worker(
    web_port: Annotated[int | None, typer.Option(help="Port of /counts and /metrics (default 6066)")] = None,
) -> None:
    """Run the Faust worker (all agents). Start more to process more partitions in parallel."""
    from learner.settings import LearnerSettings
    from ops.topic_admin import create_learner_topic
    from streams.worker import run_worker

    logs.configure()
    kafka = KafkaSettings()
    ensure_broker(kafka)
    settings = WorkerSettings() if web_port is None else WorkerSettings(web_port=web_port)
    if LearnerSettings().enabled:
        create_learner_topic(kafka, settings)
    sys.argv = [sys.argv[0]]  # faust.Worker parses argv itself
    run_worker(kafka, settings)


# ------------------------------------------------------------------ serve


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="HTTP port (default 8000)")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1)")] = None,
    model_dir: Annotated[Path | None, typer.Option(
        help="HF model directory of the base (default $RECLOOP_BASE_MODEL_DIR or the bundled MiniLM)")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Serve the seeded tiny BERT (tests, quick benchmarks)")] = False,
    processes: Annotated[int | None, typer.Option(
        min=1, max=64, help="Serving processes sharing the port, e.g. one per core (default 1)")] = None,
) -> None:
    """Run a serving worker: /recommend, /search, /similar, /feedback, /healthz, /metrics; hot-swaps published
    adapters."""
    from serving.app import run_server
    from serving.settings import ServingConfigError, ServingSettings

    logs.configure()
    options = {"port": port, "host": host, "model_dir": model_dir, "tiny": tiny or None, "processes": processes}
    overrides = {name: value for name, value in options.items() if value is not None}
    try:
        settings = ServingSettings(**overrides)
        settings.signing_key()
    except ServingConfigError as exc:
        _fail(str(exc))
    kafka = KafkaSettings()
    ensure_broker(kafka)
    run_server(settings, kafka)


# ------------------------------------------------------------------ adapters

adapters_app = typer.Typer(help="Adapters the learner published: list, inspect, roll back.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


@adapters_app.command("list")
def adapters_list(
    local: Annotated[bool, typer.Option(help="Do not ask the broker which adapter is current")] = False,
) -> None:
    """Every adapter under RECLOOP_HOME/adapters, oldest first, with its parent and gate metrics (JSON lines)."""
    from ops.adapters import latest_update, list_adapters

    settings = KafkaSettings()
    latest = None if local else asyncio.run(latest_update(settings))
    for row in list_adapters(settings.home, latest.version if latest is not None else None):
        print(json.dumps(row))


@adapters_app.command("show")
def adapters_show(version: Annotated[str, typer.Argument(help="Adapter version, e.g. v000012")]) -> None:
    """Manifest, configs, files and payload digest of one adapter (JSON)."""
    from ops.adapters import AdapterNotFound, show_adapter

    try:
        print(json.dumps(show_adapter(KafkaSettings().home, version), indent=2))
    except AdapterNotFound as exc:
        _fail(str(exc))


@adapters_app.command("rollback")
def adapters_rollback(version: Annotated[str, typer.Argument(help="The older adapter to put back in service")]) -> None:
    """Republish VERSION's weights as the newest adapter (new id, parent = current, freshly signed)."""
    from learner.settings import LearnerConfigError, LearnerSettings
    from ops.adapters import AdapterNotFound, rollback

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    try:
        update = rollback(settings, version, LearnerSettings().signing_key())
    except (AdapterNotFound, LearnerConfigError, ValueError) as exc:
        _fail(str(exc))
    print(json.dumps({"published": update.version, "parent": update.parent, "weights_of": version,
                      "sha256": update.sha256}))


# ------------------------------------------------------------------ demo


@app.command()
def demo(
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many interactions")] = 60_000,
    speedup: Annotated[float | None, typer.Option(min=0.001, help="Replay event time this many times faster "
                                                                  "(default: as fast as the loop runs)")] = None,
    data: Annotated[Path, typer.Option(help="The dataset to replay")] = Path("data/online_retail.parquet"),
    tiny: Annotated[bool, typer.Option("--tiny", help="A tiny random encoder instead of MiniLM (smoke runs)")] = False,
    servers: Annotated[int, typer.Option(min=1, max=8, help="Serving workers")] = 2,
    out: Annotated[Path | None, typer.Option(help="Report directory (default reports/demo-<time>)")] = None,
    resume: Annotated[bool, typer.Option("--continue", help="Continue the previous demo run (its topics, worker "
                                                            "state and adapters; the replay goes on after the last "
                                                            "interaction it replayed) instead of starting fresh")
                      ] = False,
) -> None:
    """The whole loop on this machine: broker, worker, serving workers, replay and simulated shoppers."""
    from ops.demo import run_demo

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    out = out or Path("reports") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    raise typer.Exit(code=run_demo(settings, data=data, limit=limit, speedup=speedup, tiny=tiny, servers=servers,
                                   report_dir=out, console=console, resume=resume))


# ------------------------------------------------------------------ eval


@app.command("eval")
def eval_command(
    quick: Annotated[bool, typer.Option("--quick", help="Score every 4th eligible basket (all are still learned)")
                     ] = False,
    out: Annotated[Path, typer.Option(help="Directory for eval.md, eval.json and eval.png")] = Path("reports/eval"),
    tiny: Annotated[bool, typer.Option("--tiny", help="A seeded tiny BERT instead of MiniLM (fast, for CI)")] = False,
    model_dir: Annotated[Path | None, typer.Option(
        help="HF model directory of the base (default $RECLOOP_BASE_MODEL_DIR or the bundled MiniLM)")] = None,
    data: Annotated[Path | None, typer.Option(
        help="A shop's history: contract records (interactions and catalog items; parquet, CSV or JSONL, as "
             "`recloop replay` reads them) or the Online Retail file (default: the bundled copy)")] = None,
    baselines_only: Annotated[bool, typer.Option(
        "--baselines-only", help="Only the baselines: no encoder, no learners (fast)")] = False,
    ablations: Annotated[bool, typer.Option(help="Also run recloop's ablations (no text term, frozen text tower)")
                         ] = True,
    full_finetune: Annotated[bool, typer.Option(
        "--full-finetune", help="Also run the full fine-tune (every encoder weight trained, no LoRA; slow)")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar (there is none when stderr is not a terminal)")
                     ] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Through the real loop: broker, worker with its learner, serving workers (docs/evaluation.md, "
                       "'Live')")] = False,
    limit_baskets: Annotated[int | None, typer.Option(
        min=1, help="--live: evaluate only the first N baskets of the evaluated period")] = None,
    since: Annotated[str | None, typer.Option(
        help="--live: evaluate from this time on (ISO-8601 or epoch s; default: the test period, last 91 days)")
                     ] = None,
    history_days: Annotated[float | None, typer.Option(
        min=0.0, help="--live: replay only this many days of history before the evaluated period (default: all)")
                            ] = None,
    pace: Annotated[str, typer.Option(
        help="--live: 'keep-up' (before each evaluated basket wait until the learner and serving have consumed "
             "everything produced) or events/s for the evaluated period")] = "keep-up",
    servers: Annotated[int, typer.Option(min=1, help="--live: serving workers (asked in turn)")] = 1,
    learner_off: Annotated[bool, typer.Option(
        "--learner-off", help="--live: run the worker with RECLOOP_LEARNER=off (the comparison run)")] = False,
    window_baskets: Annotated[int | None, typer.Option(
        min=1, help="--live: held-out baskets per publish decision (default: the learner's, 200)")] = None,
    keep_up_timeout: Annotated[float, typer.Option(
        min=1.0, help="--live: longest wait for the loop to keep up before a basket is asked (s)")] = 120.0,
    search: Annotated[bool, typer.Option(
        "--search", help="Search instead: one-word queries for bought items; BM25, frozen text, a personal blend "
                         "and recloop's search (docs/evaluation.md, 'Search')")] = False,
) -> None:
    """Offline prequential evaluation of the baselines, the frozen base and recloop (with its ablations); prints JSON.

    The test period is the data's last 91 days; see docs/evaluation.md. With --live, the same protocol through
    the real loop (broker, worker, serving), compared with the offline recloop and repeat on the same baskets.
    """
    from learner.baskets import DEFAULT_DATA_PATH
    from ops.progress import event_progress
    from ops.shop_files import ShopDataError

    logs.configure("WARNING")
    data = data or DEFAULT_DATA_PATH
    if not data.is_file():
        _fail(f"no dataset at {data}")
    if live:
        _eval_live(data, quick=quick, tiny=tiny, model_dir=model_dir, out=out, limit_baskets=limit_baskets,
                   since=_parse_time(since), history_days=history_days, pace=pace, servers=servers,
                   learner=not learner_off, window_baskets=window_baskets, keep_up_timeout=keep_up_timeout,
                   quiet=quiet)
        return
    with event_progress(enabled=not quiet and sys.stderr.isatty(), console=console, label="eval",
                        unit="baskets") as progress:
        try:
            if search:
                from ops.eval_search import run_search

                result = run_search(quick=quick, tiny=tiny, model_dir=model_dir, data_path=data, out_dir=out,
                                    progress=progress)
            elif baselines_only:
                from ops.evaluate import default_models, run_eval

                result = run_eval(default_models(), quick=quick, data_path=data, out_dir=out, progress=progress)
            else:
                from ops.eval_cli import run_full_eval

                result = run_full_eval(quick=quick, out_dir=out, model_dir=model_dir, tiny=tiny, data_path=data,
                                       progress=progress, ablations=ablations, full_finetune=full_finetune)
        except ShopDataError as exc:
            _fail(str(exc))
    print(json.dumps(result, indent=2))


def _eval_live(data: Path, *, quick: bool, tiny: bool, model_dir: Path | None, out: Path, limit_baskets: int | None,
               since: float | None, history_days: float | None, pace: str, servers: int, learner: bool,
               window_baskets: int | None, keep_up_timeout: float, quiet: bool) -> None:
    """``recloop eval --live``: prints the JSON and writes it to ``out/eval_live.json``."""
    from ops.eval_live import run_live_eval
    from ops.shop_files import ShopDataError

    try:
        rate = None if pace == "keep-up" else float(pace)
    except ValueError:
        raise typer.BadParameter(f"--pace must be 'keep-up' or events per second, got {pace!r}") from None
    if rate is not None and rate <= 0:
        raise typer.BadParameter("--pace must be positive")
    settings = KafkaSettings()
    ensure_broker(settings)
    say = (lambda line: None) if quiet else (lambda line: console.print(f"[dim]eval --live:[/] {line}"))
    try:
        result = run_live_eval(settings, data_path=data, quick=quick, tiny=tiny, model_dir=model_dir, since=since,
                               limit_baskets=limit_baskets, history_days=history_days, pace=rate, servers=servers,
                               learner=learner, window_baskets=window_baskets, keep_up_timeout_s=keep_up_timeout,
                               say=say)
    except (ShopDataError, RuntimeError, TimeoutError) as exc:
        _fail(str(exc))
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_live.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


# ------------------------------------------------------------------ benchmarks


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(min=1000, help="How many events to push through")] = 100_000,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Worker processes in one group")] = 1,
    partitions: Annotated[int | None, typer.Option(min=1, help="Partitions of the run's topics "
                                                                "(default RECLOOP_PARTITIONS)")] = None,
    learner: Annotated[bool, typer.Option("--learner", help="The worker trains too (tiny encoder): the one "
                                                          "worker of a deployment that owns the learner")] = False,
) -> None:
    """Worker ingest throughput vs a plain aiokafka+orjson consumer on the same topic (--workers N: each)."""
    from ops.bench_ingest import run_bench_ingest

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    result = run_bench_ingest(settings, events=events, workers=workers, partitions=partitions, learner=learner)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


@bench_app.command("faults")
def bench_faults(
    quick: Annotated[bool, typer.Option(
        "--quick", help="6,000 events and 2 worker kills instead of 40,000 and 5")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the kill points")] = 0,
    broker_restart: Annotated[bool, typer.Option(
        "--broker-restart",
        help="Also stop and start the local broker mid-stream (it stops every client of it)")] = False,
) -> None:
    """Worker kill -9 with the learner on, forged adapters, a serving worker killed mid-swap: what was lost,
    trained twice, or served wrong (docs/operations.md, "Faults")."""
    from ops.bench_faults import run_bench_faults

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    if broker_restart and settings.uses_external_cluster:
        _fail("--broker-restart stops the local broker; RECLOOP_KAFKA_BOOTSTRAP points at an external cluster")
    result = run_bench_faults(settings, quick=quick, seed=seed,
                              broker=local_broker(settings) if broker_restart else None)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


@bench_app.command("serve")
def bench_serve(
    duration: Annotated[float, typer.Option(min=5, help="Seconds of measured load")] = 30.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Clients requesting at once")] = 8,
    swap_every: Annotated[float, typer.Option(min=0.1, help="Seconds between published adapters")] = 1.0,
    interactions: Annotated[int, typer.Option(min=1000, help="Most recent purchases the worker learns")] = 100_000,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny BERT instead of MiniLM (quick check)")] = False,
    route: Annotated[str, typer.Option(help="The route the clients ask: recommend or search")] = "recommend",
    processes: Annotated[int, typer.Option(min=1, max=64, help="Serving processes sharing the port")] = 1,
) -> None:
    """/recommend (or /search) k=10 latency over the whole catalogue while a new adapter is swapped in every
    second."""
    if route not in ("recommend", "search"):
        _fail(f"--route must be recommend or search, not {route!r}")
    from ops.bench_serve import run_bench_serve

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    result = run_bench_serve(settings, duration_s=duration, concurrency=concurrency, swap_every_s=swap_every,
                             interactions=interactions, tiny=tiny, route=route, processes=processes)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


@bench_app.command("freshness")
def bench_freshness(
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny BERT instead of MiniLM (quick check)")] = False,
    device: Annotated[str, typer.Option(help="Where the learner trains: cpu, cuda or auto")] = "cpu",
    rate: Annotated[float, typer.Option(min=0.1, help="Live events produced per second")] = 10.0,
    duration: Annotated[float, typer.Option(min=5, help="Seconds of live events")] = 120.0,
    warmup: Annotated[int, typer.Option(min=100, help="History events learned before the live phase")] = 3000,
) -> None:
    """Seconds from an event's produce until a serving worker answers with an adapter trained on it."""
    from ops.bench_freshness import run_bench_freshness

    logs.configure("WARNING")
    settings = KafkaSettings()
    ensure_broker(settings)
    result = run_bench_freshness(settings, tiny=tiny, device=device, rate=rate, duration_s=duration, warmup=warmup)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


# ------------------------------------------------------------------ monitor, report (online metrics and drift)


@app.command()
def monitor(
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit")] = False,
    worker_url: Annotated[str | None, typer.Option(help="The worker's web address (default from RECLOOP_WORKER_*)")]
    = None,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between redraws")] = 2.0,
    all_workers: Annotated[bool, typer.Option("--all-workers", help="Also show stopped workers' rows")] = False,
) -> None:
    """Live terminal view: throughput, consumer lag, online metrics, drift alarms, adapters and gate decisions."""
    import logging

    from ops.monitor import DashboardSettings, run_monitor, worker_group_ids

    logs.configure("WARNING")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # client chatter would scroll the dashboard away
    kafka, worker_settings = KafkaSettings(), WorkerSettings()
    ensure_broker(kafka)
    url = worker_url or f"http://{worker_settings.web_host}:{worker_settings.web_port}"
    out = Console(width=160) if once else Console()
    raise typer.Exit(code=run_monitor(kafka, worker_url=url, group_ids=worker_group_ids(kafka, worker_settings),
                                      once=once, interval_s=interval, console=out,
                                      dashboard=DashboardSettings(all_workers=True) if all_workers else None))


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Directory for the PNG plots and summary.md")],
    all_workers: Annotated[bool, typer.Option("--all-workers", help="Also show stopped workers' rows")] = False,
) -> None:
    """Plots of the online metrics over time (adapter versions and drift alarms marked) and a summary.md."""
    from ops.monitor import DashboardSettings
    from ops.report import run_report

    logs.configure("WARNING")
    kafka = KafkaSettings()
    ensure_broker(kafka)
    try:
        result = run_report(kafka, out, dashboard=DashboardSettings(all_workers=True) if all_workers else None)
    except TimeoutError as exc:
        _fail(str(exc))
    print(json.dumps(result.as_dict(), indent=2))


@bench_app.command("feedback")
def bench_feedback(
    events: Annotated[int, typer.Option(min=100, help="Simulated feedback events")] = 5000,
    seeds: Annotated[int, typer.Option(min=1, help="Independent simulated shops")] = 20,
    live: Annotated[bool, typer.Option("--live", help=(
        "Through the real path: broker, worker, a serving worker and simulated shoppers on the bundled data"))]
    = False,
    window: Annotated[int, typer.Option(min=100, help="--live: feedback events the rates are measured over (the "
                                                      "last ones)")] = 1000,
    tiny: Annotated[bool, typer.Option("--tiny", help="--live: tiny BERT instead of MiniLM (quick check)")] = False,
    policy: Annotated[bool, typer.Option("--policy/--no-policy", help=(
        "--live: --no-policy is the baseline: no policy published, serving names the largest scoring term"))]
    = True,
) -> None:
    """Explanation bandit vs oracle and random styles: a simulated shop, or (--live) the whole loop."""
    if live:
        from ops.bench_feedback import run_bench_feedback_live

        logs.configure("WARNING")
        settings = KafkaSettings()
        ensure_broker(settings)
        try:
            result = run_bench_feedback_live(settings, events=events, window=min(window, events), tiny=tiny,
                                             policy=policy)
        except (RuntimeError, TimeoutError) as exc:
            _fail(str(exc))
        result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(result))
        return
    from ops.bench_feedback import run_bench_feedback

    result = run_bench_feedback(events=events, seeds=seeds)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


@bench_app.command("train")
def bench_train(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    random_weights: Annotated[bool, typer.Option(help="MiniLM's config with random weights (no model package)")]
    = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimizer step")] = 32,
    steps: Annotated[int, typer.Option(min=1, help="Timed recloop steps")] = 6,
    baseline_steps: Annotated[int, typer.Option(min=1, help="Timed baseline steps (it is much slower)")] = 2,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default)")] = 1,
    bucket_size: Annotated[int, typer.Option(min=0, help="Items per length bucket (0: no bucketing)")] = 16,
    compile: Annotated[bool, typer.Option(help="torch.compile the encoder on the recloop path")] = False,
) -> None:
    """Learner training throughput vs a plain PEFT LoRA loop, same model and batches, same run."""
    from ops.bench_train import TrainBenchConfig, run_bench_train

    logs.configure("WARNING")
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("--device must be cpu or cuda")
    try:
        result = run_bench_train(TrainBenchConfig(device=device, random_weights=random_weights,
                                                  batch_size=batch_size, steps=steps, baseline_steps=baseline_steps,
                                                  threads=threads, bucket_size=bucket_size, compile=compile))
    except ValueError as exc:
        _fail(str(exc))
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
