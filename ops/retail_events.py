"""The one documented mapping of the Online Retail file onto the contract's catalog items and interactions.

Replay (``recloop replay``) and the offline evaluation (``recloop eval``) both read the file through
:func:`retail_events`, so they see the same shop. The mapping (the only place that names the file's
columns):

| column | contract field |
|---|---|
| CustomerID | ``Interaction.user_id`` (as an int string; rows without one are skipped) |
| StockCode | ``Interaction.item_id``, ``Item.item_id`` |
| InvoiceDate | ``Interaction.ts`` (naive, read as UTC) |
| InvoiceNo | ``Interaction.session_id`` (one invoice = one checkout); a leading "C" is a cancellation |
| Quantity | ``Interaction.quantity`` (absolute value); negative = a return |
| UnitPrice (optional) | ``Interaction.price``, ``Item.price`` |
| Description (optional) | ``Item.title``: the latest one on a priced line (unpriced lines are stock adjustments |
| | whose text is a note such as "damaged"), else the first one, else the stock code |

One row is one line of an invoice. It becomes a ``purchase``, or a ``return`` when the invoice is a
cancellation or the quantity is negative. ``event_id`` is derived from the invoice, the stock code and
the row's position among identical (invoice, stock code) lines, so the same file always yields the
same ids and a second replay is recognised as a duplicate downstream.

**The cleaning rule** (every skipped row is counted with its reason): rows without a customer, with a
negative price or a zero quantity, and rows that are not products. A product's stock code starts with
a digit; the others are postage (POST, DOT, C2), fees and charges (BANK CHARGES, AMAZONFEE, CRUK),
manual lines and discounts (M, D, B, S). They are dropped, not mapped to items, because nobody should be
recommended postage: kept, POST alone would be the item most bought again by foreign customers, so
the learner would learn it and serving would show it, and a repeat model would get credit for
predicting a shipping charge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streams.records import Interaction, Item

#: The columns the mapping needs, and the optional ones it reads when present.
REQUIRED_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "CustomerID")
OPTIONAL_COLUMNS = ("Description", "UnitPrice")
RETAIL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
NOT_A_PRODUCT = "not a product (postage, fee, manual line)"


def looks_like_retail(columns: list[str]) -> bool:
    return all(name in columns for name in REQUIRED_COLUMNS)


def is_product(stock_code: str) -> bool:
    """Products have stock codes starting with a digit; postage, fees and manual lines do not.

    >>> [is_product(code) for code in ("85123A", "10002", "POST", "BANK CHARGES", "M", "gift_0001_10")]
    [True, True, False, False, False, False]
    """
    return stock_code[:1].isdigit()


@dataclass
class RetailEvents:
    """Catalog items and interactions of a slice of the dataset, in event-time order."""

    items: list[Item]
    interactions: list[Interaction]
    skipped: Counter = field(default_factory=Counter)


def read_table(path: Path) -> pa.Table:
    if path.suffix.lower() == ".parquet":
        present = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[name for name in RETAIL_COLUMNS if name in present])
    from pyarrow import csv

    return csv.read_csv(path)


def retail_events(table: pa.Table, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None) -> RetailEvents:
    """Convert rows to events; ``since``/``until`` are epoch seconds (half-open), ``limit`` caps interactions."""
    ts = _epoch_seconds(table.column("InvoiceDate"))
    invoices = table.column("InvoiceNo").to_pylist()
    codes = [str(c) for c in table.column("StockCode").to_pylist()]
    descriptions = _optional_column(table, "Description")
    quantities = table.column("Quantity").to_pylist()
    prices = _optional_column(table, "UnitPrice")
    customers = table.column("CustomerID").to_pylist()

    order = sorted(range(len(ts)), key=lambda i: ts[i])  # stable: ties keep row order
    occurrences: Counter = Counter()
    skipped: Counter = Counter()
    interactions: list[Interaction] = []
    latest_item: dict[str, tuple[str, float | None]] = {}
    used_items: dict[str, None] = {}
    for i in order:
        invoice, code = str(invoices[i]), codes[i]
        occurrence = occurrences[(invoice, code)]
        occurrences[(invoice, code)] += 1
        description = (descriptions[i] or "").strip()
        price = prices[i]
        priced = price is not None and price > 0
        if description and description != "Unknown" and (priced or code not in latest_item):
            # unpriced lines are stock adjustments whose "description" is a note ("damaged", "amazon")
            latest_item[code] = (description, price if priced else None)
        if since is not None and ts[i] < since:
            continue
        if until is not None and ts[i] >= until:
            continue
        if limit is not None and len(interactions) >= limit:
            break
        customer = customers[i]
        if customer is None or customer != customer:  # None or NaN
            skipped["no customer id"] += 1
            continue
        quantity = quantities[i]
        if price is not None and price < 0:
            skipped["negative price"] += 1
            continue
        if not quantity:
            skipped["zero quantity"] += 1
            continue
        if not is_product(code):
            skipped[NOT_A_PRODUCT] += 1
            continue
        kind = "return" if invoice.startswith("C") or quantity < 0 else "purchase"
        interactions.append(Interaction(
            event_id=f"or-{invoice}-{code}-{occurrence}",
            user_id=str(int(customer)),
            item_id=code,
            type=kind,
            ts=ts[i],
            session_id=invoice,
            quantity=abs(int(quantity)),
            price=float(price) if price is not None else None,
        ))
        used_items[code] = None
    items = []
    for code in used_items:
        title, price = latest_item.get(code, (code, None))
        items.append(Item(item_id=code, title=title, price=price))
        if code not in latest_item:
            skipped["item without description (title = stock code)"] += 1
    return RetailEvents(items=items, interactions=interactions, skipped=skipped)


def _optional_column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _epoch_seconds(column: pa.ChunkedArray) -> list[float]:
    if pa.types.is_timestamp(column.type):
        seconds = pc.divide(pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64()), 1_000_000)
        return [float(s) for s in seconds.to_pylist()]
    from datetime import datetime

    def parse(value: str) -> float:
        for fmt in ("%Y-%m-%d %H:%M:%S", "%m/%d/%Y %H:%M", "%Y-%m-%dT%H:%M:%S"):
            try:
                return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()
            except ValueError:
                continue
        raise ValueError(f"unrecognised InvoiceDate {value!r}")

    return [parse(str(v)) for v in column.to_pylist()]


def iter_chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
