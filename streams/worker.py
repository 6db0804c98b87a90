"""``recloop worker``: build the Faust app with every agent and run it until stopped."""

from __future__ import annotations

import logging

import faust

from streams.agents import Downstream, register_ingest_agents
from streams.app import RecloopApp, create_app, worker_data_dir
from streams.ingest import IngestStats
from streams.monitoring import register_monitoring
from streams.settings import KafkaSettings, WorkerSettings
from streams.worker_identity import claim_worker_identity

log = logging.getLogger(__name__)


def build_worker_app(kafka: KafkaSettings | None = None, worker: WorkerSettings | None = None,
                     downstream: Downstream | None = None) -> tuple[RecloopApp, IngestStats]:
    kafka, worker = kafka or KafkaSettings(), worker or WorkerSettings()
    identity = claim_worker_identity(worker_data_dir(kafka), worker.id)  # before the app: its consumer's id
    recloop = create_app(kafka, worker, identity)
    stats: IngestStats = IngestStats()
    downstream = downstream or Downstream()
    from learner.settings import LearnerSettings

    learner = LearnerSettings()
    if learner.enabled:  # RECLOOP_LEARNER=off: ingest only
        from streams.learning import register_learning_agents

        register_learning_agents(recloop, downstream, learner)
    metrics = register_ingest_agents(recloop, stats, downstream)
    # Monitoring handlers go first in the Downstream lists: every event is scored before anything learns it.
    register_monitoring(recloop, downstream, registry=metrics.registry, dead_letter_impressions=not learner.enabled)
    return recloop, stats


def run_worker(kafka: KafkaSettings | None = None, worker: WorkerSettings | None = None) -> None:
    """Run the worker in this process; SIGINT/SIGTERM stop it cleanly (offsets committed)."""
    recloop, _ = build_worker_app(kafka, worker)
    log.info("starting worker app_id=%s broker=%s web=http://%s:%d/counts/", recloop.app.conf.id,
             recloop.kafka.bootstrap, recloop.worker.web_host, recloop.worker.web_port)
    faust.Worker(recloop.app, loglevel=recloop.worker.log_level).execute_from_commandline()
