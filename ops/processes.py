"""Child processes the operator tools start: workers and serving workers, configured by environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streams.settings import KafkaSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recloop_env(settings: KafkaSettings, **extra: str) -> dict[str, str]:
    """The environment that points a child ``recloop`` command at the same broker and topics, with the same
    security settings (the SASL password goes in the child's environment, never on its command line)."""
    security = {"RECLOOP_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        security.update(RECLOOP_KAFKA_SASL_MECHANISM=settings.kafka_sasl_mechanism,
                        RECLOOP_KAFKA_SASL_USERNAME=settings.kafka_sasl_username,
                        RECLOOP_KAFKA_SASL_PASSWORD=settings.sasl_password)
    if settings.kafka_ssl_cafile is not None:
        security["RECLOOP_KAFKA_SSL_CAFILE"] = str(settings.kafka_ssl_cafile)
    return {**os.environ,
            "RECLOOP_KAFKA_BOOTSTRAP": settings.bootstrap,
            "RECLOOP_TOPIC_PREFIX": settings.topic_prefix,
            "RECLOOP_PARTITIONS": str(settings.partitions),
            "RECLOOP_HOME": str(settings.home),
            **security,
            **extra}


def demo_key_unless_configured() -> dict[str, str]:
    """Environment for a benchmark's own throwaway workers: the public demo key (``RECLOOP_DEMO=1``, as ``recloop
    demo`` does) unless an adapter key is configured, so a benchmark runs from a clean shell as the README shows."""
    if os.environ.get("RECLOOP_ADAPTER_KEY") or os.environ.get("RECLOOP_ADAPTER_KEY_FILE"):
        return {}
    return {"RECLOOP_DEMO": "1"}


@dataclass
class ChildProcess:
    """A ``recloop`` sub-command running in the background with its output in a log file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", *self.args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=Path(__file__).resolve().parents[1])
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def get_json(url: str, timeout_s: float = 2.0) -> dict | None:
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_json(url: str, child: ChildProcess, *, timeout_s: float, accept: Callable[[dict], bool] | None = None,
              interval_s: float = 0.25) -> dict:
    """Wait until ``url`` answers JSON (that ``accept`` accepts, when given); raise with the child's log if it died
    or never answered so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive:
            raise RuntimeError(f"`recloop {' '.join(child.args)}` exited:\n{child.log_tail()}")
        data = get_json(url)
        if data is not None and (accept is None or accept(data)):
            return data
        time.sleep(interval_s)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s:\n{child.log_tail()}")
