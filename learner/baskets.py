"""Turn a shop's purchase interactions into shopping baskets: pure functions, no model state.

A *basket* is everything one shopper bought at one timestamp (several checkouts of one shopper at the
same timestamp are one basket). Only ``purchase`` interactions make baskets; views, clicks and
returns do not. Items are small ints from an :class:`ItemIndex`, assigned in order of first purchase,
so "the catalogue seen so far" is a prefix of the index and score vectors are plain numpy arrays.

The input is the contract's records (:class:`streams.records.Interaction` and
:class:`streams.records.Item`), whatever shop they come from; reading them from a file, or mapping
the Online Retail file onto them, is :mod:`ops.shop_files`.

>>> from streams.records import Interaction
>>> buy = lambda n, user, item, ts, kind="purchase": Interaction(f"e{n}", user, item, kind, ts, session_id=f"s{n}")
>>> index = ItemIndex()
>>> baskets_from_interactions([buy(1, "u1", "mug", 60.0), buy(2, "u1", "cup", 60.0),
...                            buy(3, "u1", "mug", 90.0, "return"), buy(4, "u2", "cup", 30.0)], index)
[Basket(user_id='u2', ts=30.0, items=(0,), basket_id='s4'), Basket(user_id='u1', ts=60.0, items=(1, 0), basket_id='s1')]
>>> index.codes
('cup', 'mug')
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.records import Interaction, Item

#: The bundled copy of the Online Retail dataset (see ``data/README.md``).
DEFAULT_DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "online_retail.parquet"


@dataclass(frozen=True, slots=True)
class Basket:
    """One shopper's purchase at one moment: the unit every recommender learns from and is scored on.

    ``ts`` is event time in epoch seconds; ``items`` are distinct :class:`ItemIndex` ints in the
    order they were bought; ``basket_id`` names the basket (its first purchase's session id, or
    that purchase's event id when it has no session).
    """

    user_id: str
    ts: float
    items: tuple[int, ...]
    basket_id: str


class ItemIndex:
    """Two-way map between item ids and dense item ints (0, 1, 2, ... in order of first use).

    >>> index = ItemIndex(["22423", "85123A"])
    >>> index.add("85123A"), index.add("POST"), len(index)
    (1, 2, 3)
    >>> index.code_of(2), "22423" in index, index.index_of("nope")
    ('POST', True, -1)
    """

    def __init__(self, codes: Iterable[str] = ()) -> None:
        self._ints: dict[str, int] = {}
        self._codes: list[str] = []
        for code in codes:
            self.add(code)

    def add(self, code: str) -> int:
        """The int for ``code``, assigning the next free one when the code is new."""
        found = self._ints.get(code)
        if found is not None:
            return found
        self._ints[code] = len(self._codes)
        self._codes.append(code)
        return len(self._codes) - 1

    def index_of(self, code: str) -> int:
        """The int for ``code``, or -1 when it was never added."""
        return self._ints.get(code, -1)

    def code_of(self, item: int) -> str:
        return self._codes[item]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._codes)

    def __len__(self) -> int:
        return len(self._codes)

    def __contains__(self, code: object) -> bool:
        return code in self._ints


def is_bought(interaction: Interaction) -> bool:
    """A purchase of at least one unit (a missing quantity means one).

    >>> is_bought(Interaction("e", "u", "i", "purchase", 0.0)), is_bought(Interaction("e", "u", "i", "view", 0.0))
    (True, False)
    >>> is_bought(Interaction("e", "u", "i", "purchase", 0.0, quantity=0))
    False
    """
    return interaction.type == "purchase" and (interaction.quantity is None or interaction.quantity > 0)


def baskets_from_interactions(interactions: Iterable[Interaction], index: ItemIndex) -> list[Basket]:
    """Group purchases into baskets in time order (then by shopper), adding new item ids to ``index``.

    Purchases of one shopper at one timestamp form one basket; its items are its distinct item ids in
    the order the purchases came (quantities and repeated lines are not weighted). The input need not
    be sorted.
    """
    bought = sorted((event for event in interactions if is_bought(event)), key=lambda e: (e.ts, e.user_id))
    baskets = []
    for (ts, user_id), events in itertools.groupby(bought, key=lambda e: (e.ts, e.user_id)):
        events = list(events)
        items = tuple(dict.fromkeys(index.add(event.item_id) for event in events))
        basket_id = events[0].session_id or events[0].event_id
        baskets.append(Basket(user_id=user_id, ts=float(ts), items=items, basket_id=basket_id))
    return baskets


def item_text(item: Item | None, item_id: str) -> str:
    """What a text encoder reads for one item: title, description and category joined, when present.

    >>> item_text(Item("1", "Mug", description="Blue, 300 ml", category="Kitchen"), "1")
    'Mug. Blue, 300 ml. Kitchen'
    >>> item_text(Item("1", " Mug ", description=""), "1"), item_text(None, "85123A")
    ('Mug', '85123A')
    """
    if item is None:
        return item_id
    parts = (item.title, item.description, item.category)
    return ". ".join(part.strip() for part in parts if part and part.strip()) or item_id


def item_texts(catalog: Mapping[str, Item], index: ItemIndex) -> list[str]:
    """:func:`item_text` of every indexed item, by item int; the item id for items not in ``catalog``.

    >>> item_texts({"b": Item("b", "CUP", category="Kitchen")}, ItemIndex(["a", "b"]))
    ['a', 'CUP. Kitchen']
    """
    return [item_text(catalog.get(code), code) for code in index.codes]


def timestamp_groups(baskets: Iterable[Basket]) -> Iterator[list[Basket]]:
    """Consecutive baskets sharing one timestamp: the unit the evaluation scores, then learns.

    >>> bs = [Basket("a", 1.0, (0,), "x"), Basket("b", 1.0, (1,), "y"), Basket("a", 2.0, (1,), "z")]
    >>> [[b.user_id for b in group] for group in timestamp_groups(bs)]
    [['a', 'b'], ['a']]
    """
    for _, group in itertools.groupby(baskets, key=lambda b: b.ts):
        yield list(group)
