"""The learner a worker runs: events in; signed adapters (or refusals) out. Plain, synchronous, testable.

:class:`LearnerService` owns the behavioural features, the ranking model and the
:class:`~learner.ranker.OnlineRanker` that trains it — the same classes ``recloop eval`` runs. The
Faust side (:mod:`streams.learning`) hands it batches of records from one thread and sends what it
returns; it never touches Kafka itself.

One call to :meth:`LearnerService.process` is one step:

1. catalogue items update the item index and texts (new ones are encoded; only catalogued items are
   ranked);
2. interactions are learned one by one; a shopper's purchases at one timestamp are a basket, complete
   once event time moves past it. A complete basket of a known shopper is **held out** — ranked over
   the whole catalogue with the state of before it — and only then learned (test, then train);
3. once ``window_baskets`` are held out, the gate compares the weights trained so far with the serving
   ones on that window: **publish** (saved and fsynced under ``<home>/adapters/<version>/``, signed,
   returned as an ``AdapterUpdate``) or **refuse** (rolled back, a ``MetricSnapshot`` says why); then
   the head (and every few windows the text tower) trains on the window.

:attr:`StepOutcome.settled_through` tells the caller which steps' events are in the state on disk:
:meth:`LearnerService.checkpoint` writes everything learned (:mod:`learner.checkpoint`) with the input
offset it covers, and the worker commits offsets only up to there. A restarted service loads the
checkpoint and the worker skips the records it already holds, so a restart continues exactly where
the checkpoint left off: same features, window, reservoir, weights and random generators. Records
are learned strictly in input order and a window is decided the moment it is full, so the state after
a given input does not depend on how it was cut into micro-batches. Impressions of ``/recommend`` are
accepted and not used for training (the window's listwise loss needs what was bought, not what was shown);
those of ``/search``, joined with the results shoppers chose, train the text tower (:mod:`learner.query_clicks`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from learner import artifacts, checkpoint
from learner.adapter_store import (
    UNPUBLISHED_PREFIX,
    is_rollback,
    mark_published,
    newest_published,
    next_version,
    require_newer,
    stored_adapters,
)
from learner.baskets import Basket
from learner.encoder import Base, load_base, tiny_bert
from learner.examples import positive_weight
from learner.gate import GateDecision
from learner.model import ModelConfig, pick_device
from learner.ranker import OnlineRanker, RetentionProbe
from learner.ranker_config import RankerConfig
from learner.rich_features import RichFeatures
from learner.settings import LearnerSettings
from learner.streaming_model import StreamingRankingModel
from streams.dedup import remember_once
from streams.records import AdapterUpdate, ExplanationFeedback, Impression, Interaction, Item, MetricSnapshot

log = logging.getLogger(__name__)

#: Names of the snapshots the learner writes to ``recloop.ops.metrics``.
GATE_METRIC = "learner.gate"


LearnerRecord = Item | Interaction | Impression | ExplanationFeedback


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class StepOutcome:
    """What one :meth:`LearnerService.process` call did and what the caller must send."""

    step: int
    #: Every step up to this one is in the last checkpoint on disk: its events may be committed.
    settled_through: int
    n_examples: int
    n_trained: int
    #: The gate's decisions of this step, oldest first (one per window that filled up), and the versions published.
    decisions: tuple[GateDecision, ...] = ()
    updates: tuple[AdapterUpdate, ...] = ()
    metrics: tuple[MetricSnapshot, ...] = ()
    #: The service's counters after the step, for the worker's ``/learner/`` page.
    status: dict = field(default_factory=dict)

    @property
    def decision(self) -> GateDecision | None:
        """The step's last decision."""
        return self.decisions[-1] if self.decisions else None

    @property
    def update(self) -> AdapterUpdate | None:
        """The step's last published version (the newest weights)."""
        return self.updates[-1] if self.updates else None

    @property
    def published(self) -> str | None:
        return self.update.version if self.update is not None else None


@dataclass
class LearnerStatus:
    """Counters for the worker's ``/learner/`` page and the logs."""

    steps: int = 0
    events: int = 0
    examples: int = 0
    trained: int = 0
    train_steps: int = 0
    published: list[str] = field(default_factory=list)
    refused: int = 0
    current_version: str | None = None
    adopted: str | None = None  # the last version taken over from the updates topic (a rollback)
    last_decision: str | None = None
    items: int = 0
    held_out: int = 0
    #: "irrelevant" explanation feedback learned (each a weighted negative for that shopper and item)
    dismissals: int = 0
    #: records whose event id the learner had already learned (forwarded twice upstream): skipped, learned once
    redelivered: int = 0
    first_published_after_s: float | None = None
    #: the input offset the checkpoint on disk covers (records at or below it are learned and saved)
    checkpointed_through: int | None = None
    checkpoints: int = 0
    last_checkpoint_s: float | None = None  # seconds the last checkpoint took to write
    last_checkpoint_mb: float | None = None

    def as_dict(self) -> dict:
        return {**self.__dict__, "published": list(self.published[-20:]), "n_published": len(self.published)}


def load_configured_base(settings: LearnerSettings) -> Base:
    """The base encoder the settings ask for (a tiny random BERT when ``tiny``)."""
    return tiny_bert(seed=settings.seed) if settings.tiny else load_base(settings.model_dir)


class LearnerService:
    """Features + ranking model + :class:`~learner.ranker.OnlineRanker` behind one lock; every public method is
    safe from one thread at a time."""

    def __init__(self, settings: LearnerSettings, home: str | Path, *, key: bytes, base: Base | None = None,
                 clock: Callable[[], float] = time.time, stop: threading.Event | None = None,
                 ranker_config: RankerConfig | None = None, probe: RetentionProbe | None = None,
                 state_dir: str | Path | None = None) -> None:
        self.settings = settings
        self.home = Path(home)
        #: where :meth:`checkpoint` writes (``None``: nothing is durable, e.g. ``recloop eval``)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.clock = clock
        self._key = key
        self._lock = threading.RLock()
        self._hold: str | None = None  # why publishing is held during the current step (learner.drift_hold)
        device = pick_device(settings.device)
        if device.type == "cpu" and settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.base = base if base is not None else load_configured_base(settings)
        ranker_config = ranker_config or settings.ranker_config()
        self.features = RichFeatures(lateness_s=settings.basket_lateness_s)
        self.model = StreamingRankingModel(self.base, ModelConfig(), device=str(device), seed=settings.seed,
                                           bucket_size=settings.encode_bucket_size)
        self.status = LearnerStatus()
        self._resume()
        self.ranker = OnlineRanker(self.model, self.features, ranker_config, probe=probe)  # accepted = resumed
        self.features.before_learn = self._hold_out
        self._titles: dict[str, str] = {}
        self._catalogued = np.zeros(0, dtype=bool)
        self._retitled: set[int] = set()
        self._step = 0
        self._checkpointed_step = 0  # every step up to this one is in the checkpoint on disk
        self._outcomes: list[tuple[GateDecision, AdapterUpdate | None, MetricSnapshot]] = []
        #: event-time watermarks: the newest interaction ``ts`` observed, and the newest basket in the weights
        #: being trained (published as ``trained_through_ts``; ``recloop bench freshness``)
        self._observed_ts: float | None = None
        self._trained_ts: float | None = None
        #: the text tower of the last published version (``RankingModel.text_version``); a version with another
        #: one ships the catalogue's item vectors, so serving workers need not re-encode it themselves
        self._published_text_version: int | None = None
        #: event ids learned recently: a redelivered event (crash between forward and commit upstream)
        #: must not be learned twice
        self._recent_events: OrderedDict[str, None] = OrderedDict()
        #: set from another thread (or process) when the worker shuts down
        self._stop = stop if stop is not None else threading.Event()
        self._started = time.monotonic()
        self.reload_checkpoint()
        log.info("learner ready: base %s (%s…) on %s, resuming from %s", self.base.name,
                 self.base.fingerprint[:12], device, self.current_version or "version 0")

    @property
    def current_version(self) -> str | None:
        """The last adapter this learner accepted (``None``: the untrained version 0)."""
        return self.status.current_version

    def _resume(self) -> None:
        """Start from the newest *published* local adapter trained on this base, if there is one.

        An adapter saved but never acknowledged by the broker (a crash between the two) is moved aside:
        its training events were not committed, so they come back and are trained again on top of the
        adapter serving workers actually have.
        """
        for stored in reversed(stored_adapters(self.home)):
            if not stored.published:
                aside = stored.path.with_name(UNPUBLISHED_PREFIX + stored.path.name)
                log.warning("adapter %s was saved but never published: moved aside to %s", stored.manifest.version,
                            aside)
                os.rename(stored.path, aside)
                continue
            if stored.manifest.base_fingerprint != self.base.fingerprint:
                continue
            try:
                artifacts.load_adapter_into(self.model, stored.path, refresh=False)
            except artifacts.AdapterRejected as exc:
                log.warning("cannot resume from %s: %s", stored.path, exc.reason)
                continue
            self.status.current_version = stored.manifest.version
            return

    # ------------------------------------------------------------------ the loop

    def request_stop(self) -> None:
        """Make a running :meth:`process` return at its next training step (the worker is shutting down).

        The step it was in stays unsettled, so its events are not committed and come back after a restart.
        """
        self._stop.set()

    def process(self, records: Sequence[LearnerRecord], sources: Sequence[int | None] | None = None, *,
                hold: str | None = None) -> StepOutcome:
        """One step over a micro-batch of records, learned in input order (consecutive catalogue items together).

        ``sources``, parallel to ``records``, says where each interaction was read: the partition of the
        interactions topic (``None``: not known). With it the features close baskets per partition
        (:mod:`learner.features`, "Basket assembly"); without it, ``records`` are taken as one ordered stream.
        A basket is held out when it is complete (before the features learn it); a window is
        decided on (publish or roll back) the moment it is full, then trained on (see :mod:`learner.ranker`).
        ``hold``: why publishing is held during this step (:mod:`learner.drift_hold`): every window is refused.
        """
        if sources is not None and len(sources) != len(records):
            raise ValueError(f"{len(sources)} sources for {len(records)} records")
        with self._lock:
            self._begin_step(hold)
            if self._stop.is_set():
                return StepOutcome(self._step, self._settled_through(), 0, 0)
            held_before, trained_before = self.status.examples, self.status.trained
            items: list[Item] = []
            for n, record in enumerate(records):
                if isinstance(record, Item):
                    items.append(record)
                    continue
                if items:
                    self.add_items(items)
                    items = []
                if isinstance(record, Interaction):
                    self._learn(record, sources[n] if sources is not None else None)
                elif isinstance(record, ExplanationFeedback):
                    self._learn_feedback(record)
                elif isinstance(record, Impression):
                    self._learn_search(record)
            self.add_items(items)
            if self._observed_ts is not None:
                self.ranker.queries.expire(self._observed_ts)
            return self._outcome(len(records), held_before, trained_before)

    def advance_to(self, ts: float, *, hold: str | None = None) -> StepOutcome:
        """Event time is now ``ts`` (a watermark): every basket before it is complete, held out and learned."""
        with self._lock:
            self._begin_step(hold)
            held_before, trained_before = self.status.examples, self.status.trained
            self.ranker.queries.expire(ts)
            self.features.advance_to(ts)
            return self._outcome(0, held_before, trained_before)

    def _learn(self, event: Interaction, source: int | None = None) -> None:
        if not self._first_time(event.event_id):
            return
        self.features.learn_interaction(event.user_id, event.item_id, event.type, event.ts,
                                        basket_id=event.session_id, source=source)
        self._observed_ts = event.ts if self._observed_ts is None else max(self._observed_ts, event.ts)
        if event.rec_id is not None and (weight := positive_weight(event.type)) > 0:
            self.ranker.queries.respond(event.rec_id, self.features.index.index_of(event.item_id), weight,
                                        ts=event.ts)

    def _learn_search(self, impression: Impression) -> None:
        """A search's results wait for the shopper's choice (:mod:`learner.query_clicks`); other impressions
        teach nothing here (the window's listwise loss needs what was bought, not what was shown)."""
        if impression.route != "search" or not impression.query:
            return
        index = self.features.index
        shown = tuple(i for i in (index.index_of(item.item_id) for item in impression.items) if i >= 0)
        self.ranker.queries.show(impression.rec_id, impression.query, shown, ts=impression.ts)

    def _learn_feedback(self, feedback: ExplanationFeedback) -> None:
        """"Not helpful, irrelevant": from now on the item is a weighted negative for that shopper (its
        ``dismissed`` column), in what the head is trained on and in what it ranks."""
        if self._first_time(feedback.event_id) and self.features.learn_feedback(feedback):
            self.status.dismissals += 1

    def _first_time(self, event_id: str) -> bool:
        """Whether ``event_id`` is new to the learner (a crash between forward and commit upstream redelivers)."""
        if remember_once(self._recent_events, event_id, self.settings.dedup_window):
            return True
        self.status.redelivered += 1
        return False

    def _begin_step(self, hold: str | None = None) -> None:
        self._step += 1
        self._outcomes = []
        self._hold = hold

    def _outcome(self, n_records: int, held_before: int, trained_before: int) -> StepOutcome:
        self.status.steps = self._step
        self.status.events += n_records
        self.status.held_out = len(self.ranker.window)
        return StepOutcome(step=self._step, settled_through=self._settled_through(),
                           n_examples=self.status.examples - held_before,
                           n_trained=self.status.trained - trained_before,
                           decisions=tuple(d for d, _, _ in self._outcomes),
                           updates=tuple(u for _, u, _ in self._outcomes if u is not None),
                           metrics=tuple(m for _, _, m in self._outcomes), status=self._status())

    def _hold_out(self, baskets: list[Basket]) -> None:
        """The features' hook: ``baskets`` (one timestamp) are complete and about to be learned."""
        self._sync_catalogue()  # every item seen so far is encoded, whatever the micro-batches were
        held = self.ranker.hold_out(baskets, self._catalogued)
        self.status.examples += len(held)
        if self.ranker.window_full:
            self._decide_window()

    def _decide_window(self) -> None:
        """Decide on the full window (publish or roll back), then train on it."""
        if self._stop.is_set():
            return  # shutting down: the step is not settled, its events come back after the restart
        size = len(self.ranker.window)
        published: list[tuple[str, AdapterUpdate]] = []
        outcome = self.ranker.close_window(on_publish=lambda decision: published.append(self._save(decision)),
                                           hold=self._hold)
        decision = outcome.decision
        version, update = published[0] if published else (None, None)
        if decision.publish:
            self.status.published.append(version)
            self.status.current_version = version
            if self.status.first_published_after_s is None:
                self.status.first_published_after_s = round(time.monotonic() - self._started, 3)
            log.info("published adapter %s (parent %s): %s", version, update.parent, decision.reason)
        else:
            self.status.refused += 1
            log.info("gate refused the candidate, rolled back to %s: %s", self.current_version or "version 0",
                     decision.reason)
        self.status.last_decision = decision.reason
        self.status.trained += size
        self.status.train_steps = self.ranker.head_steps + self.ranker.text_steps
        self._trained_ts = outcome.trained_through_ts
        self._outcomes.append((decision, update, self._gate_snapshot(decision, version)))

    def _save(self, decision: GateDecision) -> tuple[str, AdapterUpdate]:
        """Save and sign the weights now loaded (the gate accepted them): fsynced before the update is returned,
        so anything the caller sends refers to an adapter that survives a crash."""
        version = next_version(self.home)
        metrics = {**decision.as_metrics(), "baskets_trained": float(self.status.trained),
                   "train_steps": float(self.ranker.head_steps + self.ranker.text_steps)}
        if self._trained_ts is not None:
            metrics["trained_through_ts"] = self._trained_ts
        ship = self.model.text_version != self._published_text_version
        if ship:
            self.model.ensure_item_vectors(range(self.model.n_items))
        path = artifacts.save_adapter(self.model, self.home, version, parent=self.current_version,
                                      metrics=metrics, with_item_vectors=ship)
        self._published_text_version = self.model.text_version
        return version, artifacts.make_update(path, self._key)

    def _settled_through(self) -> int:
        """Every step up to the last checkpoint's is durable: the worker commits those steps' events."""
        return self._checkpointed_step

    # ------------------------------------------------------------------ durable state

    def checkpoint(self, through: int | None) -> int:
        """Write everything learned so far, covering input records up to offset ``through``; returns the last
        step it covers (the caller may then commit those steps' events). Needs a ``state_dir``."""
        if self.state_dir is None:
            raise RuntimeError("this learner has no state directory to checkpoint into")
        with self._lock:
            started = time.perf_counter()
            state = checkpoint.Checkpoint(self.base.fingerprint, through, self.learning_state(), self.clock())
            path, size = checkpoint.write_checkpoint(self.state_dir, state)
            self.status.checkpointed_through = through  # only once it is on disk (a load sets it from the file)
            self._checkpointed_step = self._step
            self.status.checkpoints += 1
            self.status.last_checkpoint_s = round(time.perf_counter() - started, 3)
            self.status.last_checkpoint_mb = round(size / 2**20, 1)
            log.info("learner checkpoint %s: %.1f MB in %.2fs, through input offset %s, step %d", path,
                     size / 2**20, self.status.last_checkpoint_s, through, self._step)
            return self._step

    #: Attributes of the service itself that a checkpoint carries (the model's, the ranker's and the
    #: features' state are taken from them).
    _STATE = ("status", "_titles", "_catalogued", "_retitled", "_observed_ts", "_trained_ts",
              "_published_text_version", "_recent_events")

    def learning_state(self) -> dict:
        """Everything this service has learned, as plain objects (see :mod:`learner.checkpoint`)."""
        return {"features": self.features, "model": self.model.learning_state(), "ranker": self.ranker.learning_state(),
                "torch_rng": torch.get_rng_state(), **{name: getattr(self, name) for name in self._STATE}}

    def reload_checkpoint(self, rewind: bool = False) -> int | None:
        """Load the checkpoint on disk if it covers more input than this service holds; return its offset, if loaded.

        At start (nothing held yet: any checkpoint of this base is loaded, else the resumed adapter stays), and for a
        worker that takes the learner's partition over from another (a rebalance, with the state directory on
        shared storage): it loaded the checkpoint when it started, the previous owner learned on since.
        ``rewind``: load it even if it covers no more: the input goes back to records learned after it (the
        partition left and came back), so the state goes back to it too.
        """
        if self.state_dir is None:
            return None
        with self._lock:
            found = checkpoint.read_checkpoint(self.state_dir, self.base.fingerprint)
            held = self.status.checkpointed_through
            if found is None or (held is not None and (found.through is None or (found.through <= held
                                                                                  and not rewind))):
                return None
            self._load(found)
            return found.through

    def _load(self, found: checkpoint.Checkpoint) -> None:
        state = found.state
        self.features = state["features"]
        self.features.before_learn = self._hold_out
        self.ranker.features = self.features
        self.model.load_learning_state(state["model"])
        self.ranker.load_learning_state(state["ranker"])
        torch.set_rng_state(state["torch_rng"])
        for name in self._STATE:
            setattr(self, name, state[name])
        self.status.checkpointed_through = found.through
        log.info("learner resumed from its checkpoint: version %s, %d items, %d baskets held out, %d trained, "
                 "input offset %s", self.current_version or "0", self.model.n_items, self.status.examples,
                 self.status.trained, found.through)

    def adopt(self, update: AdapterUpdate) -> bool:
        """Make a published adapter this learner did not train (an operator's rollback) the serving weights.

        It is verified like a serving worker would (sha256, signature, base, shapes), stored under
        ``adapters/<version>/`` if it is not there yet, loaded, and becomes the anchor the next updates
        are trained from and parented to. Training not yet decided is dropped: the operator chose these
        weights over it. Returns False when ``update`` already is the current version; an older version (a
        replayed record) is refused like serving workers refuse it (:func:`~learner.adapter_store.require_newer`).
        """
        with self._lock:
            if update.version == self.current_version:
                return False
            content = artifacts.verify(update, self._key, self.base.fingerprint, model=self.model)
            # against what reached the topic, not the current version: that may be one saved but never published
            # (a rollback landed while its step trained, streams.learning)
            require_newer(update.version, newest_published(self.home, self.base.fingerprint, excluding=update.version))
            dest = artifacts.adapters_dir(self.home) / update.version
            if not dest.exists():
                artifacts.unpack(update.payload, dest)
                mark_published(self.home, update.version)
            artifacts.load_adapter_into(self.model, content, refresh=False)
            self.model.refresh_item_vectors()
            self.ranker.adopt_current()
            self._published_text_version = None  # the next version ships item vectors again
            self.status.current_version = update.version
            self.status.adopted = update.version
            log.warning("adopted adapter %s published by someone else (parent %s): training continues from it",
                        update.version, update.parent)
            return True

    def trained_versions(self) -> list[str]:
        """Versions of this base that a learner of this home trained (published or not; rollbacks excluded).

        After a crash between publishing a version and checkpointing, the topic's newest update may be one of
        these: the restarted learner retrains it from its checkpoint rather than adopting it as foreign.
        """
        return [a.manifest.version for a in stored_adapters(self.home)
                if a.manifest.base_fingerprint == self.base.fingerprint and not is_rollback(a.manifest.version)]

    def mark_published(self, version: str) -> None:
        """The broker acknowledged ``version``: from now on a restart resumes from it."""
        mark_published(self.home, version)

    def status_dict(self) -> dict:
        with self._lock:
            return self._status()

    def _status(self) -> dict:
        """The counters, and why publishing is held (None: it is not)."""
        queries = self.ranker.queries
        return {**self.status.as_dict(), "held": self._hold, "searches": queries.searches,
                "search_choices": queries.examples.seen, "query_steps": self.ranker.query_steps}

    # ------------------------------------------------------------------ helpers

    def add_items(self, items: Iterable[Item]) -> None:
        """Catalogue records: item ids join the index (so they can be ranked), titles become item texts."""
        with self._lock:
            for item in items:
                text = item.text
                self._titles[item.item_id] = text
                index = self.features.add_item(item.item_id)
                if index < self.model.n_items and self.model.item_texts[index] != text:
                    self._retitled.add(index)
            self._sync_catalogue()

    def _sync_catalogue(self) -> None:
        """Keep the model's item texts aligned with the append-only item index; encode only what changed.

        Items seen only in interactions are encoded from their id and are not recommendable until a
        catalogue record names them.
        """
        index = self.features.index
        if len(index) > self.model.n_items:
            new = range(self.model.n_items, len(index))
            self.model.add_items([self._titles.get(index.code_of(i), index.code_of(i)) for i in new])
        if self._retitled:
            for i in self._retitled:
                self.model.item_texts[i] = self._titles[index.code_of(i)]
            self.model.refresh_item_vectors(self._retitled)
            self._retitled = set()
        if len(self._catalogued) != len(index) or len(self._titles) != int(self._catalogued.sum()):
            self._catalogued = np.array([index.code_of(i) in self._titles for i in range(len(index))], dtype=bool)
        self.status.items = self.model.n_items

    def _gate_snapshot(self, decision: GateDecision, version: str | None) -> MetricSnapshot:
        labels = {"decision": "publish" if decision.publish else "refuse", "metric": decision.metric,
                  "reason": decision.reason, "serving_version": self.current_version or "v0",
                  "candidate": _fmt(decision.candidate.get(decision.metric)),
                  "serving": _fmt(decision.serving.get(decision.metric))}
        if version is not None:
            labels["version"] = version
        return MetricSnapshot(name=GATE_METRIC, value=1.0 if decision.publish else 0.0,
                              window=decision.candidate.n, ts=self.clock(), labels=labels)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "nan"
