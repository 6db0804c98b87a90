"""Drift detectors for the live recommender: one river detector per signal, chosen for that signal.

A recommender degrades quietly: the catalogue changes, a campaign brings new shoppers, an adapter
shifts every score. Each signal below is a one-number-per-event stream, and each gets the detector
whose assumptions fit it:

================== ========================================== ============= ===========================
signal             one value per …                            detector      why this detector
================== ========================================== ============= ===========================
``miss@10``        evaluated purchase: 1 when the bought item ADWIN         a Bernoulli error stream; ADWIN
                   was not in the top 10 (the ranking loss)                 keeps an adaptive window with a
                                                                            bound on false alarms (δ) and
                                                                            reports a change of the mean
``score``          impression: the top score serving showed   KSWIN         scores have no fixed shape; a
                                                                            Kolmogorov–Smirnov window test
                                                                            sees a changed *distribution*
                                                                            (spread, bimodality), not only
                                                                            a changed mean, e.g. after a
                                                                            hot-swapped adapter
``new_user``       interaction: 1 when the shopper is new     PageHinkley   a mean shift of a share, in
``new_item``       interaction: 1 when the item is new        PageHinkley   either direction (a campaign,
                                                                            a catalogue drop); PH is
                                                                            cheap and tunable in delay
``price``          interaction: log1p(unit price)             PageHinkley   a mean shift of the price mix
``category``       interaction: −log p(category) under the    PageHinkley   the category *mix* as one
                   running category frequencies ("surprise")                number: its mean is the mix's
                                                                            cross-entropy, which moves when
                                                                            the mix moves
``item``           interaction: −log p(item) under the        PageHinkley   the same for the item mix: a
                   running item frequencies                                 bot hammering one item makes it
                                                                            fall, a burst of random labels
                                                                            (items drawn at random) makes it
                                                                            rise ("poisoned stream",
                                                                            docs/operations.md)
``query``          search impression: −log p(query) under     PageHinkley   the same for what shoppers
                   the running query frequencies                            search for: a new campaign's
                                                                            queries, a scraper's, a
                                                                            broken search box
================== ========================================== ============= ===========================

Detection delays on seeded streams are pinned by golden tests (``tests/unit/test_drift.py``) and
listed in ``docs/operations.md``.

Severity says how much the signal moved, not only that it moved. Each signal keeps its last
``history`` values since its previous alarm; at an alarm, the CUSUM estimate of the change point
splits them into *before* and *after*, and the effect size ``d = (mean(after) - mean(before)) /
std(before)`` grades it: ``|d| >= critical_d`` is ``critical``, ``|d| >= warning_d`` is ``warning``, else
``info``. A change in the *good* direction of a quality signal (fewer misses) is always ``info``.

The miss rate of the top 10 jumps from 30 % to 70 % at event 1500; ADWIN sees it 67 events later,
and the alarm says the miss rate is now 0.75 over the 67 values since the estimated change:

>>> import random
>>> rng = random.Random(7)
>>> monitor, alarms = DriftMonitor(), []
>>> for i in range(3000):
...     miss = rng.random() < (0.3 if i < 1500 else 0.7)
...     alarms += [(i, a) for a in monitor.update({"miss@10": float(miss)}, ts=1.7e9 + i)]
>>> [(i, a.detector, a.severity, a.window, round(a.value, 2)) for i, a in alarms]
[(1567, 'adwin', 'critical', 67, 0.75)]
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from river import base, drift

from streams.records import DriftAlarm

log = logging.getLogger(__name__)

Direction = Literal["up", "down", "any"]


@dataclass(frozen=True)
class SignalSpec:
    """One monitored signal: which detector watches it and which direction of change is bad."""

    name: str
    detector: str  #: short detector name, used as ``DriftAlarm.detector``
    #: Makes a fresh detector; a picklable callable (a class or a ``functools.partial``), not a lambda, so a
    #: monitor holding the detectors can be checkpointed (:mod:`streams.monitor_state`).
    make: Callable[[], base.DriftDetector]
    worse: Direction = "any"  #: "up": a rise is a degradation; "down": a fall is; "any": both are
    #: Observations to ignore after an alarm: a detector that just reset re-learns its baseline.
    cooldown: int = 0


def default_signals(seed: int = 0) -> tuple[SignalSpec, ...]:
    """The detectors the worker runs, with hyperparameters tuned on seeded streams (see the module doc)."""
    return (
        # delta=0.002: the river default; ≈ no false alarm on 10k stationary Bernoulli values.
        SignalSpec("miss@10", "adwin", partial(drift.ADWIN, delta=0.002), worse="up"),
        # alpha=1e-6 instead of river's 0.005: KSWIN tests at every step, so a per-test 0.5 %
        # false-alarm rate would alarm every few hundred stationary impressions.
        SignalSpec("score", "kswin",
                   partial(drift.KSWIN, alpha=1e-6, window_size=600, stat_size=200, seed=seed), cooldown=200),
        # delta is the smallest shift worth a look (3 points of share, 5 % of log-price, 0.1 nats),
        # thresholds keep a stationary 10k-event stream alarm-free on 40 seeds.
        SignalSpec("new_user", "page_hinkley", partial(_page_hinkley, delta=0.03, threshold=20.0)),
        SignalSpec("new_item", "page_hinkley", partial(_page_hinkley, delta=0.03, threshold=20.0)),
        SignalSpec("price", "page_hinkley", partial(_page_hinkley, delta=0.05, threshold=40.0)),
        SignalSpec("category", "page_hinkley", partial(_page_hinkley, delta=0.1, threshold=50.0)),
        # Same tuning as the category mix; on the bundled data's 6,000 baskets after warm-up: no alarm, while
        # 400 baskets of one bot-hammered item alarm after 36 and 400 of random items after 23.
        SignalSpec("item", "page_hinkley", partial(_page_hinkley, delta=0.1, threshold=50.0)),
        # The query mix of search impressions: a search's surprise varies more than a basket's mean (one query,
        # not eight items), so the smallest shift worth a look is 0.2 nats; with 0.1, 9 of 30 stationary
        # 4,000-search streams alarmed, with 0.2 none (docs/operations.md, "Delays").
        SignalSpec("query", "page_hinkley", partial(_page_hinkley, delta=0.2, threshold=50.0)),
    )


def _page_hinkley(delta: float, threshold: float) -> drift.PageHinkley:
    # min_instances=100: the running mean is too rough before that to call anything a shift;
    # alpha slightly below 1 forgets very old deviations, so a long stationary run cannot build up.
    return drift.PageHinkley(min_instances=100, delta=delta, threshold=threshold, alpha=1 - 1e-4)


class _Watched:
    """A signal's detector plus the recent values that grading an alarm needs."""

    def __init__(self, spec: SignalSpec, history: int) -> None:
        self.spec = spec
        self.detector = spec.make()
        self.values: deque[float] = deque(maxlen=history)
        self.n = 0  #: values seen in total (the index of the next value)
        self.quiet_until = 0


class DriftMonitor:
    """Feed it one value per signal and event; it answers with the alarms that value raised.

    Parameters
    ----------
    signals
        The signals to watch; values for other names are ignored.
    history
        How many latest values of each signal are kept to locate a change and grade it.
    warning_d, critical_d
        Effect sizes (in standard deviations before the change) that make an alarm a warning or critical.
    """

    def __init__(self, signals: tuple[SignalSpec, ...] | None = None, *, history: int = 2000,
                 warning_d: float = 0.2, critical_d: float = 0.8) -> None:
        self.signals = signals if signals is not None else default_signals()
        self.history = history
        self.warning_d = warning_d
        self.critical_d = critical_d
        self._reset()

    def _reset(self) -> None:
        self._watched = {spec.name: _Watched(spec, self.history) for spec in self.signals}
        self.alarms_raised = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._watched)

    def seen(self, signal: str) -> int:
        """How many values of ``signal`` were fed so far."""
        return self._watched[signal].n

    def update(self, values: Mapping[str, float | None], ts: float) -> list[DriftAlarm]:
        """Learn one value of each named signal; return the alarms raised now (usually none)."""
        alarms = []
        for name, value in values.items():
            watched = self._watched.get(name)
            if watched is None or value is None or not math.isfinite(value):
                continue
            alarm = self._update_one(watched, float(value), ts)
            if alarm is not None:
                alarms.append(alarm)
        return alarms

    def _update_one(self, w: _Watched, value: float, ts: float) -> DriftAlarm | None:
        index = w.n
        w.n += 1
        w.detector.update(value)
        w.values.append(value)
        if not (w.detector.drift_detected and index >= w.quiet_until):
            return None
        values = np.fromiter(w.values, dtype=float, count=len(w.values))
        k = change_point(values)
        before, after = values[:k], values[k:]
        severity = self._severity(w.spec, before, after)
        alarm = DriftAlarm(detector=w.spec.detector, signal=w.spec.name, value=float(after.mean()),
                           window=len(after), severity=severity, ts=ts)
        log.info("drift alarm signal=%s detector=%s index=%d after=%.4f (%d values) before=%.4f severity=%s",
                 w.spec.name, w.spec.detector, index, alarm.value, len(after),
                 float(before.mean()) if len(before) else math.nan, severity)
        w.values = deque(after.tolist(), maxlen=self.history)  # the new regime is the next reference
        w.quiet_until = index + 1 + w.spec.cooldown
        self.alarms_raised += 1
        return alarm

    def _severity(self, spec: SignalSpec, before: np.ndarray, after: np.ndarray) -> str:
        if len(before) < 2:
            return "info"
        shift = float(after.mean() - before.mean())
        if (spec.worse == "up" and shift <= 0) or (spec.worse == "down" and shift >= 0):
            return "info"  # the signal got better: worth knowing, not worth waking anyone
        d = effect_size(shift, float(before.var()))
        if d >= self.critical_d:
            return "critical"
        return "warning" if d >= self.warning_d else "info"


def change_point(values: np.ndarray) -> int:
    """Where the mean most likely changed: the split maximising the CUSUM of deviations from the mean.

    Returns the index of the first value after the change (0 when ``values`` is too short to split).

    >>> change_point(np.array([0.0, 0, 0, 0, 1, 1, 1])), change_point(np.array([5.0]))
    (4, 0)
    """
    if len(values) < 2:
        return 0
    cusum = np.cumsum(values - values.mean())[:-1]
    return int(np.argmax(np.abs(cusum))) + 1


def effect_size(shift: float, variance: float) -> float:
    """``|shift|`` in standard deviations of the reference; a shift of a constant signal is infinite.

    >>> effect_size(0.3, 0.09), effect_size(0.1, 0.0), effect_size(0.0, 0.0)
    (1.0, inf, 0.0)
    """
    if shift == 0:
        return 0.0
    return abs(shift) / math.sqrt(variance) if variance > 0 else math.inf


class Surprise:
    """``-log p(key)`` under the running frequencies of the keys (categories, items), before learning the key.

    Add-one smoothing over the keys seen so far plus one unseen slot, so a first-seen key is surprising but
    finite.

    >>> s = Surprise()
    >>> [round(s.learn_one(c), 3) for c in ["a", "a", "a", "b"]]
    [0.0, 0.405, 0.288, 1.609]
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0

    def predict_one(self, key: str) -> float:
        slots = len(self.counts) + 1
        if self.total == 0:
            return 0.0
        return -math.log((self.counts.get(key, 0) + 1) / (self.total + slots))

    def learn_one(self, key: str) -> float:
        """Return the surprise of ``key``, then count it (test, then train)."""
        surprise = self.predict_one(key)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1
        return surprise
