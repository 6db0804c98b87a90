"""Which demo run this is: a fresh one, or the previous one continued.

A fresh run gets topics and a state directory of its own: topic prefix ``<prefix>-demo-<run id>`` and
``<home>/demo/runs/<run id>/`` (the worker's tables, the learner's adapters, the logs). Nothing of an
earlier run reaches it — not the worker's deduplication table, which would drop every replayed event
as already seen, nor the updates of a run on another base model — so every run learns from the start.

``--continue`` reuses the newest run's topics and directory instead and replays the interactions that
follow the last one it replayed: the worker's consumer group, tables and the learner's adapters carry
on from where it stopped (what the learner keeps across a restart is its own business, see
``docs/operations.md``).

Only the newest :data:`RUNS_KEPT` runs are kept: starting a run deletes the topics (contract topics and
the worker's internal ones) and directories of older ones, so a MiniLM run's multi-MB adapters do not
pile up on the broker.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.topic_admin import delete_topics
from streams.app import faust_app_id
from streams.settings import KafkaSettings, WorkerSettings

log = logging.getLogger(__name__)

#: Demo runs whose topics and state are kept: the one starting and the one before it.
RUNS_KEPT = 2
#: What a run records about itself in its directory.
RUN_FILE = "run.json"


@dataclass(frozen=True)
class DemoRun:
    """One demo run: its topics, its state directory, and how far its replay got."""

    run_id: str
    directory: Path
    topic_prefix: str
    replayed_through_ts: float | None = None

    def settings(self, base: KafkaSettings) -> KafkaSettings:
        """``base`` (the broker) with this run's topic prefix and state directory."""
        return base.model_copy(update={"topic_prefix": self.topic_prefix, "home": self.directory})

    def save(self, replayed_through_ts: float | None = None) -> DemoRun:
        """Write ``run.json``; ``replayed_through_ts`` is the event time of the last interaction replayed."""
        run = DemoRun(self.run_id, self.directory, self.topic_prefix,
                      replayed_through_ts if replayed_through_ts is not None else self.replayed_through_ts)
        (self.directory / RUN_FILE).write_text(json.dumps(
            {"run_id": run.run_id, "topic_prefix": run.topic_prefix, "replayed_through_ts": run.replayed_through_ts}))
        return run


def runs_dir(settings: KafkaSettings) -> Path:
    return (settings.home / "demo" / "runs").resolve()


def new_run(settings: KafkaSettings, now: datetime | None = None) -> DemoRun:
    """A fresh run: a new id from the time (``20261202-101500``), its own topic prefix and directory."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    root = runs_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ("", *"bcdefghijklmnopqrstuvwxyz"):  # a letter: no run's id is a prefix of another's topics
        run_id = stamp + suffix
        try:
            (root / run_id).mkdir()
        except FileExistsError:
            continue
        return DemoRun(run_id, root / run_id, f"{settings.topic_prefix}-demo-{run_id}").save()
    raise RuntimeError(f"no free demo run id under {root} for {stamp}")


def runs(settings: KafkaSettings) -> list[DemoRun]:
    """Every recorded demo run, oldest first."""
    root = runs_dir(settings)
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else ():
        try:
            data = json.loads((directory / RUN_FILE).read_text())
            found.append(DemoRun(data["run_id"], directory, data["topic_prefix"], data.get("replayed_through_ts")))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping %s: not a demo run (%s)", directory, exc)
    return found


def latest_run(settings: KafkaSettings) -> DemoRun | None:
    found = runs(settings)
    return found[-1] if found else None


def remove_older_runs(settings: KafkaSettings) -> list[DemoRun]:
    """Delete the topics and directories of every run but the newest :data:`RUNS_KEPT`; returns those removed."""
    older = runs(settings)[:-RUNS_KEPT]
    worker = WorkerSettings()
    for run in older:
        run_settings = run.settings(settings)
        delete_topics(run_settings, app_id=faust_app_id(run_settings, worker))
        shutil.rmtree(run.directory, ignore_errors=True)
        log.info("removed demo run %s (topics %s.*, %s)", run.run_id, run.topic_prefix, run.directory)
    return older
