"""What searches teach the text tower: a query, the result a shopper chose, the results they passed over.

``GET /search`` writes an impression with ``source: "search"``, the query and the list it showed; a click,
add-to-cart or purchase that names the impression's ``rec_id`` says which result the shopper wanted. The learner
joins the two (the one impression⇄response join, :class:`learner.examples.ImpressionJoin`, same event-time
window) into :class:`QueryExample` — the chosen item against the shown items nobody chose — and keeps a uniform
sample of them (:class:`learner.trainer.Reservoir`). When the ranker trains its text tower it also takes a few
micro-batches of these: the query, encoded by the tower, is pulled toward the chosen item's vector and away from
the results passed over (:meth:`learner.trainer.MicroBatchTrainer.query_step`). That is what a shop's searches
can teach and its purchases cannot: which of the many items that match a word ("bag", "holder") the word means
here, and which items a query finds that share none of its words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from learner.examples import ImpressionJoin
from learner.trainer import Reservoir
from streams.settings import DEFAULT_LABEL_WINDOW_S


@dataclass(frozen=True)
class QueryExample:
    """A shopper who searched ``query`` chose ``positive`` over ``negatives`` (item indices), with ``weight``."""

    query: str
    positive: int
    negatives: tuple[int, ...]
    weight: float = 1.0


@dataclass
class ShownSearch:
    """A search's results waiting for the shopper's choices (what :class:`ImpressionJoin` holds)."""

    rec_id: str
    ts: float
    query: str
    items: tuple[int, ...]
    responses: dict[int, float] = field(default_factory=dict)  # item -> strongest weight

    def examples(self) -> list[QueryExample]:
        """One example per chosen result: it, against every result shown and not chosen."""
        negatives = tuple(item for item in self.items if item not in self.responses)
        if not negatives:
            return []
        return [QueryExample(self.query, item, negatives, weight) for item, weight in self.responses.items()]


class QueryClicks:
    """Search impressions joined with the choices that name them; a sample of the examples for the text tower.

    >>> clicks = QueryClicks(window_s=60)
    >>> clicks.show("r1", "bag", (4, 5, 6), ts=0.0)
    >>> clicks.respond("r1", 5, 1.0, ts=10.0), clicks.respond("r9", 5, 1.0, ts=10.0)
    (True, False)
    >>> clicks.expire(now=61.0)
    1
    >>> [(e.query, e.positive, e.negatives) for e in clicks.sample(4)]
    [('bag', 5, (4, 6))]
    """

    def __init__(self, window_s: float = DEFAULT_LABEL_WINDOW_S, *, max_open: int = 10_000, capacity: int = 4096,
                 seed: int = 0) -> None:
        self.join = ImpressionJoin(window_s, max_open)
        self.examples = Reservoir(capacity, seed=seed)
        self.searches = 0

    def show(self, rec_id: str, query: str, items: tuple[int, ...], *, ts: float) -> None:
        """A search showed ``items`` (indices, best first) for ``query``."""
        if not query.strip() or len(items) < 2:
            return  # nothing to choose between
        self.searches += 1
        self._keep(self.join.show(ShownSearch(rec_id, ts, query.strip().lower(), items)))

    def respond(self, rec_id: str, item: int, weight: float, *, ts: float) -> bool:
        """A shopper chose ``item`` from the search ``rec_id``; True if that search is open and showed it.
        Responses to other impressions (``/recommend``, or a search already closed) are not this join's, nor
        an item the learner does not know (``item`` < 0)."""
        if item < 0 or not self.join.is_open(rec_id):
            return False
        return self.join.respond(rec_id, item, weight, ts=ts, fallback=None)

    def expire(self, now: float) -> int:
        """Close the searches whose window ended before ``now``; how many examples they gave."""
        return self._keep(self.join.expire(now))

    def sample(self, n: int) -> list[QueryExample]:
        """Up to ``n`` examples drawn uniformly from those kept."""
        return self.examples.sample(n)

    def __len__(self) -> int:
        return len(self.examples)

    def _keep(self, examples: list) -> int:
        for example in examples:
            self.examples.offer(example)
        return len(examples)
