"""Business filters shared by ``/recommend``, ``/search`` and ``/similar``: what a list may contain.

A shop narrows a list by ``category`` (exact, case-insensitive), a price range (``price_min`` /
``price_max``, inclusive; items without a price fail a price filter), ``exclude_purchased`` (nothing the
shopper bought before) and ``in_stock`` (only items whose catalog record says ``available: true``).
Independently of any filter, an item the catalogue removed — a tombstone or ``available: false`` — is on
no list from the next request on (:class:`CatalogueFacts` reads the live catalogue, not the model state's
copy, which only refreshes every few seconds).

A filter value the catalogue cannot satisfy by construction (a category it has never named, a range with
``price_min > price_max``) is refused with :class:`InvalidFilter` (HTTP 422) rather than answered with an
empty list a client would take for "no recommendations".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: How many category names an error message lists.
NAMED_IN_ERRORS = 10


class InvalidFilter(ValueError):
    """A filter no item could pass by construction; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    """One request's filters; all off by default (every available item may be listed).

    >>> Filters().active, Filters(price_max=5.0).active
    (False, True)
    """

    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    exclude_purchased: bool = False
    in_stock: bool = False

    def __post_init__(self) -> None:
        for name in ("price_min", "price_max"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidFilter(f"{name} must be a finite number >= 0, got {value}")
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise InvalidFilter(f"price_min ({self.price_min:g}) is above price_max ({self.price_max:g})")

    @property
    def active(self) -> bool:
        return (self.category is not None or self.price_min is not None or self.price_max is not None
                or self.exclude_purchased or self.in_stock)

    def describe(self) -> dict:
        """The filters that are on, as a request would name them (for logs and responses)."""
        return {name: value for name, value in (
            ("category", self.category), ("price_min", self.price_min), ("price_max", self.price_max),
            ("exclude_purchased", self.exclude_purchased or None), ("in_stock", self.in_stock or None))
            if value is not None}


class CatalogueFacts:
    """What the catalogue says about each item besides its text, on the items' feature index: listed (in the
    catalogue and not removed), category, price, availability. Updated on the event loop by
    :class:`serving.history.LiveBehaviour`, read by requests on the same loop.

    >>> facts = CatalogueFacts()
    >>> facts.grow(3)
    >>> facts.learn(0, category="Kitchen", price=2.5, available=None)  # listed now: its listing changed
    True
    >>> facts.learn(1, category="Garden", price=10.0, available=True), facts.learn(2, category=None, price=None,
    ...                                                                          available=False)
    (True, False)
    >>> facts.allowed(3, Filters()).tolist()
    [True, True, False]
    >>> facts.allowed(3, Filters(category="kitchen")).tolist(), facts.allowed(3, Filters(in_stock=True)).tolist()
    ([True, False, False], [False, True, False])
    >>> facts.allowed(3, Filters(price_max=5), purchased=[0]).tolist()
    [True, False, False]
    >>> facts.allowed(3, Filters(exclude_purchased=True), purchased=[0]).tolist()
    [False, True, False]
    >>> facts.allowed(3, Filters(category="toys"))
    Traceback (most recent call last):
    ...
    serving.filters.InvalidFilter: unknown category 'toys'; the catalogue's categories are: Garden, Kitchen
    """

    def __init__(self) -> None:
        self.listed = np.zeros(0, dtype=bool)
        self.price = np.zeros(0, dtype=np.float64)  # NaN: no price
        self.available = np.zeros(0, dtype=np.int8)  # 1 yes, 0 no, -1 not said
        self.category = np.zeros(0, dtype=np.int32)  # index into _names; -1: none
        self._codes: dict[str, int] = {}  # casefolded name -> code
        self._names: list[str] = []  # as the catalogue first spelled it

    def __len__(self) -> int:
        return len(self.listed)

    def grow(self, n: int) -> None:
        """Room for ``n`` items; new ones are unlisted, without category, price or availability."""
        old = len(self.listed)
        if n <= old:
            return
        self.listed = np.concatenate([self.listed, np.zeros(n - old, dtype=bool)])
        self.price = np.concatenate([self.price, np.full(n - old, np.nan)])
        self.available = np.concatenate([self.available, np.full(n - old, -1, dtype=np.int8)])
        self.category = np.concatenate([self.category, np.full(n - old, -1, dtype=np.int32)])

    def learn(self, index: int, *, category: str | None, price: float | None, available: bool | None) -> bool:
        """One catalog record of item ``index``; whether its listing changed (listed, or taken off)."""
        was = bool(self.listed[index])
        self.listed[index] = available is not False
        self.available[index] = -1 if available is None else int(available)
        self.price[index] = np.nan if price is None else float(price)
        self.category[index] = -1 if not category or not category.strip() else self._code(category.strip())
        return was != bool(self.listed[index])

    def remove(self, index: int) -> bool:
        """A tombstone; whether the item was listed."""
        was = bool(self.listed[index])
        self.listed[index] = False
        return was

    def _code(self, name: str) -> int:
        key = name.casefold()
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self._names)
            self._names.append(name)
        return code

    def categories(self) -> list[str]:
        return sorted(self._names, key=str.casefold)

    def allowed(self, n_items: int, filters: Filters, purchased: Iterable[int] = ()) -> np.ndarray:
        """``[n_items]``: may each item be on a list with ``filters``? (``purchased``: the shopper's past items.)"""
        mask = np.zeros(n_items, dtype=bool)
        n = min(n_items, len(self.listed))
        mask[:n] = self.listed[:n]
        if filters.category is not None:
            code = self._codes.get(filters.category.strip().casefold())
            if code is None:
                known = self.categories()
                named = ", ".join(known[:NAMED_IN_ERRORS]) + (", ..." if len(known) > NAMED_IN_ERRORS else "")
                raise InvalidFilter(f"unknown category {filters.category[:80]!r}; " + (
                    f"the catalogue's categories are: {named}" if known else "the catalogue names no categories"))
            mask[:n] &= self.category[:n] == code
        if filters.price_min is not None:
            mask[:n] &= self.price[:n] >= filters.price_min  # NaN compares False: no price, no match
        if filters.price_max is not None:
            mask[:n] &= self.price[:n] <= filters.price_max
        if filters.in_stock:
            mask[:n] &= self.available[:n] == 1
        if filters.exclude_purchased:
            bought = np.fromiter((i for i in purchased if 0 <= i < n_items), dtype=np.int64)
            mask[bought] = False
        return mask
