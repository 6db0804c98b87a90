"""``RECLOOP_ADAPTER_KEY_FILE``: the adapter key read from a file (a Docker/Kubernetes secret)."""

from __future__ import annotations

import pytest

from learner.settings import LearnerConfigError, LearnerSettings
from serving.settings import ServingConfigError, ServingSettings

BOTH = [(LearnerSettings, LearnerConfigError), (ServingSettings, ServingConfigError)]


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    for name in ("RECLOOP_ADAPTER_KEY", "RECLOOP_ADAPTER_KEY_FILE", "RECLOOP_DEMO", "RECLOOP_SERVE_DEMO"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("settings", "error"), BOTH)
def test_the_key_file_named_in_the_environment_is_the_key_less_its_line_break(settings, error, tmp_path,
                                                                               monkeypatch):
    secret = tmp_path / "adapter_key"
    secret.write_text("s3cret key\n")  # what `echo "s3cret key" > file` writes
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY_FILE", str(secret))
    assert settings().signing_key() == b"s3cret key"


def test_the_learner_and_serving_read_the_same_key_from_one_secret(tmp_path, monkeypatch):
    secret = tmp_path / "adapter_key"
    secret.write_bytes(b"9f2c\r\n")
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY_FILE", str(secret))
    assert LearnerSettings().signing_key() == ServingSettings().signing_key() == b"9f2c"


@pytest.mark.parametrize(("settings", "error"), BOTH)
def test_a_missing_or_empty_key_file_is_a_start_up_error_even_in_demo_mode(settings, error, tmp_path, monkeypatch):
    monkeypatch.setenv("RECLOOP_DEMO", "1")  # a key file that is named but unusable must never fall back
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(error, match="RECLOOP_ADAPTER_KEY_FILE=.*cannot be read"):
        settings().signing_key()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY_FILE", str(tmp_path / "empty"))
    with pytest.raises(error, match="is empty"):
        settings().signing_key()


@pytest.mark.parametrize(("settings", "error"), BOTH)
def test_a_key_and_a_key_file_together_are_refused(settings, error, tmp_path, monkeypatch):
    (tmp_path / "k").write_text("from-file")
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY_FILE", str(tmp_path / "k"))
    monkeypatch.setenv("RECLOOP_ADAPTER_KEY", "from-env")
    with pytest.raises(error, match="set only one"):
        settings().signing_key()


@pytest.mark.parametrize(("settings", "error"), BOTH)
def test_without_key_or_file_the_error_names_both_ways_to_set_it(settings, error):
    with pytest.raises(error, match="RECLOOP_ADAPTER_KEY_FILE"):
        settings().signing_key()
