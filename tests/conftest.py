"""Shared fixtures. Integration tests run against a real local Kafka broker started once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "online_retail.parquet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout_s: float, interval_s: float = 0.25,
              message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {message} (last: {last!r})")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: RECLOOP_KAFKA_BOOTSTRAP if set, else the project's local broker (started if needed)."""
    external = os.environ.get("RECLOOP_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from ops.kafka_broker import LocalKafka

    broker = LocalKafka(REPO / ".recloop")
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
        self.port = free_port()
        self.env = {**os.environ,
                    "RECLOOP_KAFKA_BOOTSTRAP": settings.bootstrap,
                    "RECLOOP_TOPIC_PREFIX": settings.topic_prefix,
                    "RECLOOP_PARTITIONS": str(settings.partitions),
                    "RECLOOP_HOME": str(settings.home),
                    "RECLOOP_WORKER_APP_ID": app_id,
                    "RECLOOP_WORKER_WEB_PORT": str(self.port)}
        self.log_path = tmp_path / f"worker-{app_id}-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], cwd=REPO, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.counts_or_none() is not None, timeout_s=90, message=f"worker web endpoint (log: {self.log_path})")
        return self

    def counts_or_none(self) -> dict | None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/counts/", timeout=2)
            return response.json() if response.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def counts(self) -> dict:
        return self.counts_or_none() or {}

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def worker_factory(kafka_settings, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    app_id = f"worker-{uuid.uuid4().hex[:8]}"
    started: list[WorkerProcess] = []

    def make() -> WorkerProcess:
        worker = WorkerProcess(kafka_settings, tmp_path, app_id).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()
