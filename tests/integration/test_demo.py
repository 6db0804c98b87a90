"""``recloop demo`` against the real broker: every run learns, however many ran before it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter

import pytest

from ops import demo_runs
from ops.processes import recloop_env
from ops.topic_admin import admin_client, create_topics
from streams import records
from streams.app import faust_app_id
from streams.settings import WorkerSettings
from tests.conftest import REPO, wait_for
from tests.integration.test_learning_worker import read_topic

pytestmark = pytest.mark.kafka

#: Interactions each demo run replays: enough for the tiny learner to publish and serve a version.
DEMO_LIMIT = 5000


def run_demo(settings, tmp_path, *flags: str) -> str:
    """``recloop demo --tiny`` as a user runs it; returns what it printed (on stderr, like every CLI message)."""
    done = subprocess.run([sys.executable, "-m", "ops.cli", "demo", "--tiny", "--limit", str(DEMO_LIMIT),
                           "--servers", "1", "--out", str(tmp_path / "report"), *flags],
                          env=recloop_env(settings), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return done.stderr


def impressions(settings, run: demo_runs.DemoRun) -> list[records.Impression]:
    """Every impression the run's serving workers logged."""
    topic = run.settings(settings).topic("impressions")
    return [records.decode(records.Impression, value) for _, value in asyncio.run(read_topic(settings, topic))]


@pytest.mark.slow
def test_the_tiny_demo_learns_and_serves_new_versions_on_every_run(kafka_settings, tmp_path):
    """Twice in a row on the same broker and home: the second run is not starved by the first's dedup table."""
    outputs = [run_demo(kafka_settings, tmp_path), run_demo(kafka_settings, tmp_path)]

    runs = demo_runs.runs(kafka_settings)
    assert len(runs) == 2 and runs[0].topic_prefix != runs[1].topic_prefix
    for output, run in zip(outputs, runs, strict=True):
        assert output.startswith(f"starting fresh: demo run {run.run_id}")
        shown = impressions(kafka_settings, run)
        served = Counter(impression.model_version for impression in shown)
        routes = Counter(impression.route for impression in shown)
        print(f"demo run {run.run_id} served {dict(served)} on {dict(routes)}")
        assert set(served) - {"v0"}, f"run {run.run_id} served only {dict(served)}"
        assert routes["recommend"] and routes["search"], routes  # the simulated shoppers search too
        assert all(i.query for i in shown if i.route == "search")


def test_a_new_run_removes_the_topics_and_state_of_runs_before_the_previous_one(kafka_settings):
    made = [demo_runs.new_run(kafka_settings) for _ in range(3)]
    for run in made:
        create_topics(run.settings(kafka_settings))

    removed = demo_runs.remove_older_runs(kafka_settings)

    assert removed == made[:1] and demo_runs.runs(kafka_settings) == made[1:]
    assert not made[0].directory.exists()
    wait_for(lambda: not [n for n in topic_names(kafka_settings) if n.startswith(made[0].topic_prefix + ".")],
             timeout_s=30, message="the oldest run's topics to be deleted")
    names = topic_names(kafka_settings)
    assert all([n for n in names if n.startswith(run.topic_prefix + ".")] for run in made[1:])


def topic_names(settings) -> list[str]:
    admin = admin_client(settings)
    try:
        return admin.list_topics()
    finally:
        admin.close()


def test_continue_picks_the_newest_run_and_where_its_replay_stopped(kafka_settings):
    assert demo_runs.latest_run(kafka_settings) is None
    first = demo_runs.new_run(kafka_settings)
    second = demo_runs.new_run(kafka_settings).save(replayed_through_ts=1291319940.0)

    latest = demo_runs.latest_run(kafka_settings)

    assert first.run_id != second.run_id and latest == second and latest.replayed_through_ts == 1291319940.0
    assert faust_app_id(first.settings(kafka_settings), WorkerSettings()) + "-" not in \
        faust_app_id(second.settings(kafka_settings), WorkerSettings())
