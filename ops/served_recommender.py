"""recloop as ``recloop eval`` scores it: the deployed learner trains, serving's code ranks.

:class:`ServedRecommender` is a :class:`~learner.baselines.Recommender` for the prequential harness
(:mod:`ops.evaluate`) built from the production pieces, in-process and without a broker:

* learning: a real :class:`~learner.service.LearnerService` (the worker's learner) is fed the stream as
  contract records (catalogue :class:`~streams.records.Item` s, purchase
  :class:`~streams.records.Interaction` s) and an event-time watermark after each timestamp group;
* publishing: every adapter it accepts is saved, signed and packed as an
  :class:`~streams.records.AdapterUpdate`, then verified and built into a serving state by serving's
  own :class:`~serving.updates.StateUpdater` — a forged or broken update would fail here as it fails there;
* ranking: serving's :class:`~serving.history.LiveBehaviour` follows the same records, and from its
  :meth:`~serving.history.LiveBehaviour.ranking_inputs` the state being served ranks: the top 10 is
  :meth:`~serving.state.ServingState.top_k` (what ``GET /recommend`` serves, new-item stage included:
  :mod:`serving.new_items`), the rest of the catalogue follows by
  :meth:`~serving.state.ServingState.score_all`.

So the figure ``recloop eval`` prints for ``recloop`` is the figure of what a shopper would be served,
one adapter version at a time (a version serves from the moment it is published, as on the topic).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import SecretStr

from learner.artifacts import AdapterRejected
from learner.baskets import Basket
from learner.encoder import Base
from learner.ranker import RetentionProbe
from learner.ranker_config import RankerConfig
from learner.ranking_metrics import K
from learner.service import LearnerService
from learner.settings import LearnerSettings
from serving.history import LiveBehaviour, RankingInputs
from serving.new_items import NewItemSlate
from serving.settings import ServingSettings
from serving.state import ServingState, StateBuilder, StateHolder, Swap
from serving.updates import StateUpdater
from streams.records import Impression, Interaction, Item, RecommendedItem, encode

log = logging.getLogger(__name__)

#: How far past a timestamp group the watermark goes: less than the data's time resolution.
WATERMARK_S = 1e-3


@dataclass(frozen=True)
class SearchShown:
    """What a search showed a shopper: its id, the query and the items (harness ints), best first."""

    rec_id: str
    query: str
    items: tuple[int, ...]


def _chosen_from(shown: SearchShown | None, item: int) -> str | None:
    """The search an item was bought from: the one that showed it, if any."""
    return shown.rec_id if shown is not None and item in shown.items else None


class _Counter:
    """The swap listener of the evaluation: counts what serving workers would count."""

    def __init__(self) -> None:
        self.swaps = 0
        self.refusals: list[str] = []

    def swapped(self, swap: Swap, cause: str) -> None:
        self.swaps += cause == "adapter"

    def rejected(self, kind: str, reason: str) -> None:
        self.refusals.append(f"{kind}: {reason}")


class ServedRecommender:
    """The deployed learner + serving's ranking, as one :class:`~learner.baselines.Recommender`.

    ``items[i]`` is ``(item_id, text)`` of the harness's item int ``i``; an item joins the catalogue (both the
    learner's and serving's) once it was sold, so the candidates are "every item seen before", as in the
    protocol. ``probe_until``: baskets before it form the retention slice (held out of training).
    """

    def __init__(self, base: Base, items: Sequence[tuple[str, str]], *, name: str = "recloop",
                 config: RankerConfig | None = None, probe_until: float | None = None,
                 home: Path | None = None) -> None:
        self.name = name
        self._items = list(items)
        self._home = Path(tempfile.mkdtemp(prefix=f"recloop-eval-{name}-")) if home is None else home
        key = secrets.token_bytes(32)
        settings = LearnerSettings.model_construct(adapter_key=SecretStr(key.hex()), device="cpu", torch_threads=0)
        self.probe = RetentionProbe(probe_until) if probe_until is not None else None
        self.learner = LearnerService(settings, self._home, key=key.hex().encode(), base=base,
                                      ranker_config=config or RankerConfig(), probe=self.probe)
        self.live = LiveBehaviour()
        self.holder = StateHolder()
        self._counter = _Counter()
        self.updater = StateUpdater(StateBuilder(base), self.holder, self.live, key.hex().encode(), self._counter)
        self.holder.swap(self.updater.builder.build(None, self.live.snapshot()))
        self._max_history = ServingSettings.model_fields["max_history"].default
        self._catalogued: set[int] = set()
        self._position = np.zeros(0, dtype=np.int64)  # harness item int -> serving's index (-1: not there yet)
        self._last: tuple | None = None  # the last shopper's ranking inputs (:meth:`_inputs`)

    # ------------------------------------------------------------------ Recommender protocol

    def learn(self, baskets: list[Basket], searches: dict[tuple[str, int], SearchShown] | None = None) -> None:
        """One timestamp group, as the stream would carry it: purchases, then event time moves past them, then
        the items first sold in it join the catalogue (the next group may be recommended them).

        ``searches``: the searches shoppers of this group made first, by ``(user_id, item)``: the impression of
        each goes to the learner before the purchases, and the purchase of the item names it (``rec_id``) when
        the search showed the item — a choice from the search's results (:mod:`learner.query_clicks`)."""
        ts = baskets[0].ts
        searches = searches or {}
        impressions = [Impression(shown.rec_id, user, ts, "eval", tuple(
            RecommendedItem(self._items[i][0], float(-rank)) for rank, i in enumerate(shown.items)),
            source="search", query=shown.query) for (user, _), shown in searches.items()]
        events = [Interaction(f"{b.user_id}|{ts}|{n}", b.user_id, self._items[item][0], "purchase", ts,
                              session_id=b.basket_id or None, rec_id=_chosen_from(searches.get((b.user_id, item)),
                                                                                 item))
                  for b in baskets for n, item in enumerate(b.items)]
        outcome = self.learner.process([*impressions, *events])
        for update in (*outcome.updates, *self.learner.advance_to(ts + WATERMARK_S).updates):
            self._publish(update)
        for event in events:
            self.live.learn_interaction(event)
        self.live.features.advance_to(ts + WATERMARK_S)
        new = [Item(*self._items[item]) for b in baskets for item in b.items if item not in self._catalogued]
        if new:
            self._catalogued.update(item for b in baskets for item in b.items)
            self.learner.process(new)
            for item in new:
                self.live.learn_item(item)

    def score(self, user_id: str, candidates: np.ndarray, slate: NewItemSlate | None = None) -> np.ndarray:
        """Scores that rank ``candidates`` as serving does: first the top :data:`~learner.ranking_metrics.K` that
        ``GET /recommend`` serves (:meth:`~serving.state.ServingState.top_k`, with ``slate``, default serving's),
        in its order, then every other recommendable item by its model score; ``-inf`` for the rest."""
        state, inputs, scores, _ = self._inputs(user_id)
        recommendable = state.catalogue.recommendable[: state.n_items]
        served = np.where(recommendable, scores.astype(np.float64), -np.inf)
        top, _, _ = state.top_k(inputs.history, inputs.rows, recommendable, K, slate, ages=inputs.ages)
        if len(top):
            served[top] = served[np.isfinite(served)].max() + np.arange(len(top), 0, -1)
        return self._at(served, candidates)

    def model_score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        """The model's score of each candidate (:meth:`~serving.state.ServingState.score_all`, no new-item stage;
        ``-inf`` where not recommendable): what search blends with its text and lexical scores."""
        state, _, scores, _ = self._inputs(user_id)
        return self._at(np.where(state.catalogue.recommendable[: state.n_items], scores, -np.inf), candidates)

    def text_score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        """The served text tower alone: cosine of the shopper's text vector to each recommendable candidate's
        (the cosine the head reads, from :meth:`~serving.state.ServingState.score_all`); ``-inf`` for the rest."""
        state, _, _, cosine = self._inputs(user_id)
        return self._at(np.where(state.catalogue.recommendable[: state.n_items], cosine, -np.inf), candidates)

    def _inputs(self, user_id: str) -> tuple[ServingState, RankingInputs, np.ndarray, np.ndarray]:
        """The state, the shopper's ranking inputs, the model's scores and the text cosines, kept while nothing
        changed (the slate and text views of one shopper's basket rank the same inputs)."""
        state = self._state()
        key = (user_id, self.live.generation, self.live.features.clock, sum(self.live.counts.values()))
        if self._last is not None and self._last[0] is state and self._last[1] == key:
            return state, *self._last[2:]
        inputs = self.live.ranking_inputs(state, user_id, self._max_history)
        scores, cosine = state.score_all(inputs.history, inputs.rows)
        self._last = (state, key, inputs, scores.numpy(), cosine.numpy())
        return state, *self._last[2:]

    def _at(self, served: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        index = self._positions(candidates)
        return np.where(index >= 0, served[np.maximum(index, 0)], -np.inf)

    def query_cosine(self, query: str, candidates: np.ndarray) -> np.ndarray:
        """Cosine of ``query`` encoded by the served text tower (base + current adapter) to each candidate's
        item vector (``-inf`` for items serving does not have yet) — the text half of search."""
        state = self._state()
        vector = torch.nn.functional.normalize(state.source.encode([query])[0], dim=-1)
        cosine = (state.item_vectors @ vector).numpy()
        index = self._positions(candidates)
        return np.where(index >= 0, cosine[np.maximum(index, 0)], -np.inf)

    # ------------------------------------------------------------------ pieces

    def _publish(self, update) -> None:
        """What a serving worker does with an update on the topic: verify, build, swap."""
        if update is None:
            return
        try:
            state = self.updater.build(encode(update), self.live.snapshot(), self.holder.current)
        except AdapterRejected as exc:  # serving would refuse it and keep serving what it has
            self._counter.rejected("adapter", exc.reason)
            return
        if state is not None:
            self._counter.swapped(self.holder.swap(state), "adapter")
        self.learner.mark_published(update.version)

    def _state(self):
        """The serving state, extended to catalogue items that arrived since it was built."""
        current = self.holder.current
        if current.catalogue.generation != self.live.generation:
            current = self.updater.builder.extend(current, self.live.snapshot())
            self.holder.swap(current)
        return current

    def _positions(self, candidates: np.ndarray) -> np.ndarray:
        index = self.live.features.index
        if len(self._position) < len(self._items):
            self._position = np.full(len(self._items), -1, dtype=np.int64)
        missing = self._position[candidates] < 0
        for item in candidates[missing].tolist():
            self._position[item] = index.index_of(self._items[item][0])
        return self._position[candidates]

    @property
    def versions_served(self) -> int:
        return self._counter.swaps

    def report(self) -> dict:
        """The learner's ranker report, plus what serving did with its versions."""
        return {**self.learner.ranker.report(), "versions_served": self.versions_served,
                "rejected_updates": len(self._counter.refusals)}

    def close(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)


class SlateView:
    """The same served learner ranked with another new-item slate (:mod:`serving.new_items`): a second row of
    the evaluation at the cost of scoring only. It learns nothing itself — list it with its
    :class:`ServedRecommender`, which learns every group (the harness scores a group before any model learns it).
    """

    def __init__(self, served: ServedRecommender, name: str, slate: NewItemSlate) -> None:
        self.served = served
        self.name = name
        self.slate = slate

    def learn(self, baskets: list[Basket]) -> None:
        """Nothing: :attr:`served` learns the group."""

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return self.served.score(user_id, candidates, self.slate)


class TextView:
    """The served learner's text tower alone (:meth:`ServedRecommender.text_score`): what the trained tower finds
    by itself, to set beside the frozen base (``frozen_base``) — above all on discovery. Learns nothing itself,
    like :class:`SlateView`."""

    def __init__(self, served: ServedRecommender, name: str) -> None:
        self.served = served
        self.name = name

    def learn(self, baskets: list[Basket]) -> None:
        """Nothing: :attr:`served` learns the group."""

    def score(self, user_id: str, candidates: np.ndarray) -> np.ndarray:
        return self.served.text_score(user_id, candidates)
