"""The local broker manager fails early and clearly: missing tools, a taken port, incomplete jars."""

from __future__ import annotations

import socket

import pytest

from ops import kafka_broker
from ops.kafka_broker import BrokerError, LocalKafka


def test_missing_java_or_maven_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(kafka_broker.shutil, "which", lambda name: None if name == "mvn" else f"/usr/bin/{name}")
    with pytest.raises(BrokerError, match="`mvn` was not found on PATH.*Maven"):
        LocalKafka(tmp_path).fetch()
    monkeypatch.setattr(kafka_broker.shutil, "which", lambda name: None)
    with pytest.raises(BrokerError, match="`java` was not found on PATH.*Java 17"):
        LocalKafka(tmp_path).fetch()


def test_a_taken_port_is_reported_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} is already taken"):
            LocalKafka(tmp_path, port=port).start()


def test_incomplete_jars_are_detected(tmp_path):
    broker = LocalKafka(tmp_path)
    broker.libs.mkdir(parents=True)
    (broker.libs / kafka_broker.REQUIRED_JARS[0]).write_bytes(b"")
    assert set(broker.missing_jars()) == set(kafka_broker.REQUIRED_JARS[1:])


def test_a_stale_pid_file_does_not_count_as_running(tmp_path):
    broker = LocalKafka(tmp_path)
    broker.home.mkdir(parents=True)
    broker.pid_file.write_text("999999")
    assert broker.pid() is None
    assert broker.stop() is False
