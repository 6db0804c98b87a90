"""Structured logs: one line per event, ``key=value`` pairs after a fixed prefix."""

from __future__ import annotations

import logging
import os


def configure(level: str | None = None) -> None:
    """Configure root logging for a recloop command (library code only ever gets loggers)."""
    level = (level or os.environ.get("RECLOOP_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(level=level, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
