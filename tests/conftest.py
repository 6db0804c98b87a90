"""Shared fixtures. Integration tests run against a real local Kafka broker started once per session."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.processes import ChildProcess, free_port, get_json, recloop_env, wait_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "online_retail.parquet"


def wait_for(predicate: Callable[[], object], *, timeout_s: float, interval_s: float = 0.25,
              message: str | Callable[[], str] = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {message() if callable(message) else message} "
                f"(last: {last!r})")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: RECLOOP_KAFKA_BOOTSTRAP if set, else the project's local broker (started if needed)."""
    external = os.environ.get("RECLOOP_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from ops.kafka_broker import LocalKafka, broker_reachable

    broker = LocalKafka(REPO / ".recloop")
    if broker.pid() is None and broker_reachable(broker.bootstrap, timeout_s=3):
        yield broker.bootstrap  # a broker of another checkout already serves this port: share it
        return
    was_running = broker.pid() is not None
    broker.start(timeout_s=180)
    yield broker.bootstrap
    if not was_running:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic prefix per test, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}.recloop"


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path):
    from ops.topic_admin import create_topics
    from streams.settings import KafkaSettings

    settings = KafkaSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, partitions=4,
                             home=tmp_path / "home")
    create_topics(settings)
    return settings


class WorkerProcess:
    """``recloop worker`` in a subprocess, configured by environment like an operator would."""

    def __init__(self, settings, tmp_path: Path, app_id: str) -> None:
        self.app_id = app_id
        self.port = free_port()
        env = recloop_env(settings, RECLOOP_WORKER_APP_ID=app_id, RECLOOP_WORKER_WEB_PORT=str(self.port))
        self.child = ChildProcess(["worker"], env, tmp_path / f"worker-{app_id}-{self.port}.log")
        self.url = f"http://127.0.0.1:{self.port}/counts/"

    def start(self) -> WorkerProcess:
        self.child.start()
        wait_json(self.url, self.child, timeout_s=90)
        return self

    def counts(self) -> dict:
        if not self.child.alive:
            pytest.fail(f"worker exited:\n{self.child.log_tail()}")
        return get_json(self.url) or {}

    @property
    def alive(self) -> bool:
        return self.child.alive

    def stop(self) -> None:
        self.child.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell in teardown whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def worker_factory(kafka_settings, tmp_path: Path, request) -> Iterator[Callable[[], WorkerProcess]]:
    app_id = f"worker-{uuid.uuid4().hex[:8]}"
    started: list[WorkerProcess] = []

    def make() -> WorkerProcess:
        worker = WorkerProcess(kafka_settings, tmp_path, app_id).start()
        started.append(worker)
        return worker

    yield make
    failed = getattr(request.node, "report_call", None) is not None and request.node.report_call.failed
    for worker in started:
        if failed:  # the worker's own log is the first thing to read when an integration test fails
            print(f"--- log of worker {worker.child.log_path} ---\n{worker.child.log_tail(20_000)}")
        worker.stop()
