"""Turn the Online Retail transactions into the contract's catalog items and interactions.

One row of the dataset is one line of an invoice. A row with a customer becomes an
``Interaction``: a purchase, or a return when the invoice is a cancellation ("C…") or the
quantity is negative. Rows without a customer cannot be attributed to a shopper and are
skipped (counted, with that reason). ``event_id`` is derived from the invoice, the stock code
and the row's position among identical (invoice, stock code) lines, so the same file always
yields the same ids and a second replay is recognised as a duplicate downstream.
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

RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")


def looks_like_retail(columns: list[str]) -> bool:
    return all(name in columns for name in RETAIL_COLUMNS)


@dataclass
class RetailEvents:
    """Catalog items and interactions of a slice of the dataset, in event-time order."""

    items: list[Item]
    interactions: list[Interaction]
    skipped: Counter = field(default_factory=Counter)


def read_table(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=list(RETAIL_COLUMNS))
    from pyarrow import csv

    return csv.read_csv(path)


def retail_events(table: pa.Table, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None) -> RetailEvents:
    """Convert rows to events; ``since``/``until`` are epoch seconds (half-open), ``limit`` caps interactions."""
    ts = _epoch_seconds(table.column("InvoiceDate"))
    invoices = table.column("InvoiceNo").to_pylist()
    codes = [str(c) for c in table.column("StockCode").to_pylist()]
    descriptions = table.column("Description").to_pylist()
    quantities = table.column("Quantity").to_pylist()
    prices = table.column("UnitPrice").to_pylist()
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
        if description and description != "Unknown":
            latest_item[code] = (description, price if price is not None and price > 0 else None)
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
        if price is None or price < 0:
            skipped["negative price"] += 1
            continue
        if not quantity:
            skipped["zero quantity"] += 1
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
            price=float(price),
        ))
        used_items[code] = None
    items = []
    for code in used_items:
        title, price = latest_item.get(code, (code, None))
        items.append(Item(item_id=code, title=title, price=price))
        if code not in latest_item:
            skipped["item without description (title = stock code)"] += 1
    return RetailEvents(items=items, interactions=interactions, skipped=skipped)


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
