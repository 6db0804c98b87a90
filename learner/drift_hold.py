"""Hold publishing while the input looks poisoned: a critical drift alarm on the item mix stops the gate.

A bot hammering one item, or a burst of random labels, moves the item mix, and the worker's ``item`` drift
signal raises a critical alarm within about 60 baskets (:mod:`learner.drift`, ``docs/operations.md``,
"Poisoned stream"). The gate alone cannot see poison: it compares the candidate with the serving version on
held-out baskets *of the same stream*. So from such an alarm on, for ``hold_s`` seconds (wall clock, like the
alarm's own time), every window the learner decides on is refused with the alarm as the reason, and the
weights roll back to the last published version: what the learner trained on during the hold never
reaches shoppers. Publishing resumes, from the accepted weights, once the hold has passed
(``RECLOOP_LEARNER_DRIFT_HOLD_S``, 600 s; 0 never holds).

Alarms come from the ``recloop.ops.drift`` topic, so with several workers the learner hears every worker's
monitor; a restarted learner reads the alarms of the last ``hold_s`` seconds again.

>>> hold = DriftHold(hold_s=600)
>>> hold.observe(DriftAlarm(detector="page_hinkley", signal="category", value=2.0, window=80,
...                         severity="critical", ts=1_000.0))  # another signal: no hold
False
>>> hold.observe(DriftAlarm(detector="page_hinkley", signal="item", value=0.4, window=61,
...                         severity="critical", ts=1_000.0))
True
>>> hold.reason(now=1_300.0)
'critical drift alarm on item (page_hinkley, 61 baskets) at 1970-01-01T00:16:40Z: publishing held until 00:26:40Z'
>>> hold.reason(now=1_601.0) is None
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from streams.records import DriftAlarm

#: The signals whose critical alarms hold publishing: the input mix that poison moves.
HOLD_SIGNALS = frozenset({"item"})


def _utc(ts: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return time.strftime(fmt, time.gmtime(ts))


@dataclass
class DriftHold:
    """Whether publishing is held now, and why (``hold_s`` of 0 never holds)."""

    hold_s: float = 600.0
    until: float = 0.0
    why: str = ""

    def observe(self, alarm: DriftAlarm) -> bool:
        """Take ``alarm`` into account; True if it (re)starts a hold."""
        if not self.hold_s or alarm.severity != "critical" or alarm.signal not in HOLD_SIGNALS:
            return False
        until = alarm.ts + self.hold_s
        if until <= self.until:
            return False
        self.until = until
        self.why = (f"critical drift alarm on {alarm.signal} ({alarm.detector}, {alarm.window} baskets) at "
                    f"{_utc(alarm.ts)}: publishing held until {_utc(until, '%H:%M:%SZ')}")
        return True

    def reason(self, now: float | None = None) -> str | None:
        """Why publishing is held at ``now`` (wall clock), or None when it is not."""
        now = time.time() if now is None else now
        return self.why if now < self.until else None
