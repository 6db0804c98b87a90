"""Kafka security settings: what each client gets, what is refused, and that the password never shows."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from ops.processes import recloop_env
from streams.settings import KafkaSettings


def test_plaintext_by_default():
    kafka = KafkaSettings()
    assert kafka.aiokafka_options() == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}
    assert kafka.faust_credentials() is None


def test_sasl_ssl_gives_every_client_the_same_credentials(tmp_path):
    (tmp_path / "password").write_text("s3cret\n")
    kafka = KafkaSettings(kafka_bootstrap="b1:9096,b2:9096", kafka_security_protocol="SASL_SSL",
                          kafka_sasl_username="shop", kafka_sasl_password_file=tmp_path / "password")
    options = kafka.aiokafka_options()
    assert options["bootstrap_servers"] == "b1:9096,b2:9096"
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("shop", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname
    assert kafka.kafka_python_options()["bootstrap_servers"] == ["b1:9096", "b2:9096"]
    credentials = kafka.faust_credentials()
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "shop", "s3cret", "SCRAM-SHA-512")
    assert credentials.protocol.value == "SASL_SSL"
    assert "s3cret" not in repr(kafka) and "s3cret" not in repr(credentials)


def test_a_child_process_gets_the_security_settings_in_its_environment():
    kafka = KafkaSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="shop", kafka_sasl_password="pw")
    env = recloop_env(kafka)
    assert env["RECLOOP_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["RECLOOP_KAFKA_SASL_PASSWORD"] == "pw"


@pytest.mark.parametrize("values, message", [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs RECLOOP_KAFKA_SASL_USERNAME"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "needs RECLOOP_KAFKA_SASL_USERNAME"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nowhere/ca.pem"}, "is not a file"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
])
def test_incomplete_or_unknown_security_is_a_clear_error(values, message):
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**values)
