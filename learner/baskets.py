"""Turn the Online Retail transactions into shopping baskets: pure functions, no model state.

A *basket* is everything one customer bought at one timestamp (the file has minute resolution;
several invoices of one customer in the same minute are one basket). Items are small ints from an
:class:`ItemIndex`, assigned in order of first purchase, so "the catalogue seen so far" is a prefix
of the index and score vectors are plain numpy arrays.

>>> import datetime as dt
>>> import pyarrow as pa
>>> t = dt.datetime(2011, 1, 1, 9, 30)
>>> table = pa.table({"InvoiceNo": ["1", "1", "C2", "3"], "StockCode": ["85123A", "POST", "85123A", "22423"],
...                   "Quantity": [6, 1, -6, 2], "InvoiceDate": [t, t, t, t],
...                   "CustomerID": [17850.0, 17850.0, 17850.0, None]})
>>> index = ItemIndex()
>>> baskets_from_rows(clean_transactions(table), index)
[Basket(user_id='17850', ts=1293874200.0, items=(0,), invoice='1')]
>>> index.code_of(0)
'85123A'
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

#: The bundled copy of the dataset (see ``data/README.md``).
DEFAULT_DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "online_retail.parquet"

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "CustomerID")


@dataclass(frozen=True, slots=True)
class Basket:
    """One shopper's purchase at one moment: the unit every recommender learns from and is scored on.

    ``ts`` is event time in epoch seconds; ``items`` are distinct :class:`ItemIndex` ints in the
    order they appear on the invoice; ``invoice`` is the first invoice number of the basket.
    """

    user_id: str
    ts: float
    items: tuple[int, ...]
    invoice: str


class ItemIndex:
    """Two-way map between StockCodes and dense item ints (0, 1, 2, ... in order of first use).

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


def read_transactions(path: Path = DEFAULT_DATA_PATH) -> pa.Table:
    """The raw Online Retail rows (the columns a basket needs, plus Description for item text)."""
    return pq.read_table(path, columns=list(COLUMNS))


def clean_transactions(table: pa.Table) -> pa.Table:
    """Keep real purchases of real products by known customers.

    Drops rows without a CustomerID, with Quantity <= 0, on cancellation invoices (leading "C"),
    and non-product StockCodes (POST, DOT, M, BANK CHARGES, ...: every product code starts with a digit).
    """
    customer = table.column("CustomerID")
    known_customer = pc.invert(pc.fill_null(pc.is_nan(customer), True))
    bought = pc.greater(table.column("Quantity"), 0)
    not_cancelled = pc.invert(pc.starts_with(table.column("InvoiceNo"), "C"))
    is_product = pc.match_substring_regex(table.column("StockCode"), r"^[0-9]")
    keep = pc.and_(pc.and_(known_customer, bought), pc.and_(not_cancelled, is_product))
    cleaned = table.filter(keep)
    log.info("kept %d of %d transaction rows", cleaned.num_rows, table.num_rows)
    return cleaned


def epoch_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Naive timestamps (read as UTC) to float epoch seconds.

    >>> import datetime as dt
    >>> epoch_seconds(pa.array([dt.datetime(1970, 1, 1, 0, 1)])).tolist()
    [60.0]
    """
    micros = pc.cast(column, pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return micros.astype(np.float64) / 1e6


def baskets_from_rows(table: pa.Table, index: ItemIndex) -> list[Basket]:
    """Group cleaned rows into baskets, in time order (then by customer), adding new codes to ``index``.

    Rows of one customer at one timestamp form one basket; its items are its distinct StockCodes
    (quantities and repeated lines are not weighted).
    """
    ts = epoch_seconds(table.column("InvoiceDate"))
    customers = table.column("CustomerID").to_numpy(zero_copy_only=False).astype(np.int64)
    codes = table.column("StockCode").to_pylist()
    invoices = table.column("InvoiceNo").to_pylist()
    order = np.lexsort((np.arange(len(ts)), customers, ts))  # time, then customer, then file order
    baskets = []
    for (when, customer), rows in itertools.groupby(order.tolist(), key=lambda r: (ts[r], customers[r])):
        rows = list(rows)
        items = tuple(dict.fromkeys(index.add(codes[r]) for r in rows))
        baskets.append(Basket(user_id=str(customer), ts=float(when), items=items, invoice=invoices[rows[0]]))
    return baskets


def load_baskets(path: Path = DEFAULT_DATA_PATH) -> tuple[list[Basket], ItemIndex]:
    """Read, clean and group the dataset: the chronological baskets and the item index they use."""
    index = ItemIndex()
    baskets = baskets_from_rows(clean_transactions(read_transactions(path)), index)
    log.info("%d baskets, %d items, %d customers from %s", len(baskets), len(index),
             len({b.user_id for b in baskets}), path)
    return baskets, index


def item_descriptions(table: pa.Table, index: ItemIndex) -> list[str]:
    """The first non-empty Description of each indexed item (text features for other models).

    >>> table = pa.table({"StockCode": ["1", "1", "2"], "Description": ["Unknown", "MUG ", "CUP"]})
    >>> item_descriptions(table, ItemIndex(["1", "2", "3"]))
    ['MUG', 'CUP', '']
    """
    texts = [""] * len(index)
    for code, text in zip(table.column("StockCode").to_pylist(), table.column("Description").to_pylist(),
                          strict=True):
        item = index.index_of(code)
        text = (text or "").strip()
        if item >= 0 and not texts[item] and text and text != "Unknown":
            texts[item] = text
    return texts


def timestamp_groups(baskets: Iterable[Basket]) -> Iterator[list[Basket]]:
    """Consecutive baskets sharing one timestamp: the unit the evaluation scores, then learns.

    >>> bs = [Basket("a", 1.0, (0,), "x"), Basket("b", 1.0, (1,), "y"), Basket("a", 2.0, (1,), "z")]
    >>> [[b.user_id for b in group] for group in timestamp_groups(bs)]
    [['a', 'b'], ['a']]
    """
    for _, group in itertools.groupby(baskets, key=lambda b: b.ts):
        yield list(group)
