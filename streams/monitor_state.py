"""Durable monitoring: the worker's :class:`~learner.online_metrics.OnlineMonitor` survives a restart.

The monitor (online metric windows, the served-quality join, drift detectors, the explanation
bandit's posteriors, the baseline scorer's behaviour features) lives in memory. Without a
checkpoint a restarted worker starts it cold while the deduplication table (rightly) keeps every
old event away from it, so it would never see them again.

* :class:`AppliedOffsets`: per ``(topic, partition)``, the last offset whose record the monitor applied.
* :class:`CheckpointedMonitor`: the monitor plus those offsets. Every record goes through it with its
  :class:`~streams.ingest.SourcePosition`; a record at or below the applied offset of its partition
  (a redelivery) is skipped, so nothing is counted twice. The monitor and the offsets change together,
  synchronously, so a checkpoint taken between two records is always consistent.
* :class:`MonitorCheckpoint`: one file in the worker's state directory, written atomically (a temporary
  file, fsync, rename, fsync of the directory), read back at start. A checkpoint written with other
  monitoring settings, or in another format, or that cannot be read, is set aside with one log line and
  the monitor starts cold: a window of another size cannot be continued honestly.

What a ``kill -9`` can still lose: records applied after the last checkpoint whose offsets Faust had
already committed are not delivered again, so up to one checkpoint interval of monitoring updates is
missing after a crash (records not yet committed are redelivered; their ``event_id`` is usually in
the deduplication table already, and then the monitor does not see them either). A graceful stop
writes a checkpoint after the agents stopped and after the consumer's final commit
(:class:`streams.monitoring.StopHook`) and loses nothing.

The file is a pickle of the worker's own state in its own data directory: it is trusted like the
rest of that directory. Never point ``RECLOOP_HOME`` at files from elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from learner.durable import replace_file
from learner.online_metrics import OnlineMonitor
from streams.ingest import SourcePosition
from streams.records import DriftAlarm, ExplanationFeedback, Impression, Interaction, Item

log = logging.getLogger(__name__)

#: Version of the checkpoint's layout; another version is not read.
FORMAT = 5  # 2: classic metrics (accuracy, precision, recall, F1); 3: reliability (calibration) windows; 4: item mix
# 5: query mix
#: The checkpoint's file name in the worker's state directory.
FILE_NAME = "monitor.pickle"

PartitionKey = tuple[str, int]


@dataclass
class AppliedOffsets:
    """The last offset applied per ``(topic, partition)``.

    >>> applied = AppliedOffsets()
    >>> applied.record(SourcePosition("t", 0, 7))
    >>> applied.covers(SourcePosition("t", 0, 7)), applied.covers(SourcePosition("t", 0, 8))
    (True, False)
    >>> applied.covers(SourcePosition("t", 1, 0))
    False
    """

    offsets: dict[PartitionKey, int] = field(default_factory=dict)

    def covers(self, position: SourcePosition) -> bool:
        """Whether the record at ``position`` was applied already (a redelivery)."""
        return position.offset <= self.offsets.get((position.topic, position.partition), -1)

    def record(self, position: SourcePosition) -> None:
        key = (position.topic, position.partition)
        self.offsets[key] = max(position.offset, self.offsets.get(key, -1))


class CheckpointedMonitor:
    """An :class:`OnlineMonitor` and the offsets of the records it applied; each record is applied once.

    A record without a position (a test, a replay outside Kafka) is always applied. ``changed`` tells
    whether anything was applied since the last :meth:`MonitorCheckpoint.save`.
    """

    def __init__(self, monitor: OnlineMonitor, applied: AppliedOffsets | None = None) -> None:
        self.monitor = monitor
        self.applied = applied if applied is not None else AppliedOffsets()
        self.skipped = 0
        self.changed = False

    def interaction(self, record: Interaction, position: SourcePosition | None) -> list[DriftAlarm]:
        return self._apply(self.monitor.learn_interaction, record, position)

    def feedback(self, record: ExplanationFeedback, position: SourcePosition | None) -> list[DriftAlarm]:
        return self._apply(self.monitor.learn_feedback, record, position)

    def item(self, record: Item, position: SourcePosition | None) -> list[DriftAlarm]:
        return self._apply(self.monitor.learn_item, record, position)

    def impression(self, record: Impression, position: SourcePosition | None) -> list[DriftAlarm]:
        return self._apply(self.monitor.learn_impression, record, position)

    def _apply(self, learn: Callable, record: object, position: SourcePosition | None) -> list[DriftAlarm]:
        if position is not None and self.applied.covers(position):
            self.skipped += 1
            log.debug("monitor skips %s[%d]@%d: applied before the restart", position.topic, position.partition,
                      position.offset)
            return []
        alarms = learn(record) or []
        if position is not None:
            self.applied.record(position)
        self.changed = True
        return alarms


class MonitorCheckpoint:
    """The checkpoint file of one worker's monitor.

    ``fingerprint``: the monitoring configuration the state was built with (window sizes, join windows,
    sampling); a checkpoint with another fingerprint is not restored.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.failures = 0
        self._saving: asyncio.Lock | None = None

    def dumps(self, state: CheckpointedMonitor) -> bytes:
        """The checkpoint's bytes. Cheap enough to call on the event loop (about 0.1 s for 200k purchases),
        which keeps the monitor and its offsets consistent; :meth:`write` may then run in a thread."""
        payload = {"format": FORMAT, "fingerprint": self.fingerprint, "saved_at": time.time(),
                   "offsets": dict(state.applied.offsets), "monitor": state.monitor}
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        state.changed = False
        return data

    def write(self, data: bytes) -> None:
        """Replace the checkpoint atomically: a crash leaves the old file or the new one, never a torn one."""
        replace_file(self.path, lambda handle: handle.write(data))

    def save(self, state: CheckpointedMonitor) -> int:
        """Write the checkpoint now; return its size in bytes."""
        data = self.dumps(state)
        self.write(data)
        return len(data)

    async def save_async(self, state: CheckpointedMonitor, why: str) -> bool:
        """The worker's save: when ``state`` changed, pickle it now (on the event loop, between two records) and
        write it in a thread. One save at a time. A failure is logged and returns False, never raises: a
        checkpoint that cannot be written must not stop the worker (a restart continues from the previous one)."""
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:
            if not state.changed:
                return True
            started = time.perf_counter()
            try:
                data = self.dumps(state)
                await asyncio.get_running_loop().run_in_executor(None, self.write, data)
            except Exception:
                state.changed = True
                self.failures += 1
                log.error("monitor checkpoint (%s) failed (%d so far): a restart would continue from the previous "
                          "one", why, self.failures, exc_info=self.failures == 1)
                return False
            log.debug("monitor checkpoint (%s): %d bytes in %.3fs", why, len(data), time.perf_counter() - started)
            return True

    def load(self, clock: Callable[[], float] = time.time) -> CheckpointedMonitor | None:
        """The saved monitor (its clock set to ``clock``) and offsets; None when there is none to continue."""
        if not self.path.exists():
            return None
        try:
            payload = pickle.loads(self.path.read_bytes())
        except Exception as exc:  # any unreadable file: start cold rather than not start
            return self._set_aside(f"cannot be read ({type(exc).__name__}: {exc})")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            return self._set_aside(f"has another format than {FORMAT}")
        if payload.get("fingerprint") != self.fingerprint:
            return self._set_aside("was written with other monitoring settings "
                                   f"({payload.get('fingerprint')} != {self.fingerprint})")
        monitor: OnlineMonitor = payload["monitor"]
        monitor.clock = clock
        state = CheckpointedMonitor(monitor, AppliedOffsets(dict(payload["offsets"])))
        log.info("monitor restored from %s (saved %.0fs ago): %d partitions, %d baskets closed, %d purchases evaluated",
                 self.path, time.time() - payload["saved_at"], len(state.applied.offsets), monitor.baskets_closed,
                 monitor.evaluator.purchases_evaluated)
        return state

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".old")
        os.replace(self.path, aside)
        log.warning("monitor checkpoint %s %s: moved to %s, monitoring starts cold", self.path, why, aside.name)
        return None


