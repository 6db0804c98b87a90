"""Serving boots from a snapshot: its behaviour state and the stream positions that state covers.

Without one, a serving worker rebuilds what it knows about shoppers and the catalogue
(:class:`serving.history.LiveBehaviour`) by reading the catalog, interactions and explanation-feedback topics
from their beginning, so its start time grows with the history forever. With one, it loads the state as of
the snapshot and reads only the tail: the messages after the positions the snapshot records.

A snapshot is written by the worker itself, every ``snapshot_every_s`` seconds while something changed and at
a graceful stop, to ``<RECLOOP_HOME>/serving/<topic prefix>.snapshot`` (:func:`learner.durable.replace_file`:
a crash leaves the old file or the new one). The state and the positions are captured together on the event
loop, where the stream followers apply messages, so every message is in the state exactly once: before the
recorded position it is in the snapshot, from it on it is read again. Several serving processes of one host
share the file (the last writer wins; each snapshot is whole).

The file is a pickle: written and read by the same deployment on its own disk (like the learner's and the
monitor's checkpoints), never taken from the network. A snapshot of another topic prefix or format is ignored.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from learner.durable import replace_file
from serving.history import LiveBehaviour

log = logging.getLogger(__name__)

#: Bumped whenever what a snapshot holds changes incompatibly; older files are then ignored.
FORMAT = 1


@dataclass(frozen=True)
class ServingSnapshot:
    """``live`` as of ``positions``: for each (topic, partition), the offset of the next message to read."""

    topic_prefix: str
    positions: dict[tuple[str, int], int]
    live: LiveBehaviour
    saved_at: float = field(default_factory=time.time)
    format: int = FORMAT


def snapshot_path(home: Path, topic_prefix: str) -> Path:
    return Path(home) / "serving" / f"{topic_prefix}.snapshot"


def capture(snapshot: ServingSnapshot) -> bytes:
    """The snapshot's bytes; call it where nothing changes the state meanwhile (the event loop)."""
    return pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)


def write_snapshot(path: Path, data: bytes) -> int:
    """Write captured bytes durably; returns the size."""
    return replace_file(path, lambda handle: handle.write(data))


def read_snapshot(path: Path, topic_prefix: str) -> ServingSnapshot | None:
    """The snapshot at ``path`` when there is a usable one for ``topic_prefix``, else None (said in the log)."""
    if not path.is_file():
        return None
    started = time.perf_counter()
    try:
        with open(path, "rb") as handle:
            snapshot = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
        log.error("serving snapshot %s is unreadable (%s): reading the topics from the beginning", path, exc)
        return None
    if not isinstance(snapshot, ServingSnapshot) or snapshot.format != FORMAT:
        log.warning("serving snapshot %s has another format: ignored", path)
        return None
    if snapshot.topic_prefix != topic_prefix:
        log.warning("serving snapshot %s is of topics %s.*, not %s.*: ignored", path, snapshot.topic_prefix,
                    topic_prefix)
        return None
    log.info("serving snapshot %s read in %.2fs (saved %.0fs ago, %d partitions' positions)", path,
             time.perf_counter() - started, time.time() - snapshot.saved_at, len(snapshot.positions))
    return snapshot
