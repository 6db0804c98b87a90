"""Online Retail rows become catalog items and interactions with deterministic event ids."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pyarrow as pa

from ops.replay import Pacer, contract_messages
from ops.retail_events import retail_events
from streams.settings import KafkaSettings


def table(rows: list[tuple]) -> pa.Table:
    names = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
    columns = list(zip(*rows, strict=True))
    return pa.table({name: list(col) for name, col in zip(names, columns, strict=True)})


ROWS = [
    ("536366", "22633", "HAND WARMER UNION JACK ", 6, datetime(2010, 12, 1, 8, 28), 1.85, 17850.0),
    ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, datetime(2010, 12, 1, 8, 26), 2.55, 17850.0),
    ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, datetime(2010, 12, 1, 8, 26), 2.55, 17850.0),
    ("536367", "84879", "ASSORTED COLOUR BIRD ORNAMENT", 32, datetime(2010, 12, 1, 8, 34), 1.69, None),
    ("C536379", "22633", "HAND WARMER UNION JACK", -1, datetime(2010, 12, 1, 9, 41), 1.85, 14527.0),
    ("A563185", "B", "Adjust bad debt", 1, datetime(2011, 8, 12, 14, 50), -11062.06, 13000.0),
]


def test_rows_become_events_in_event_time_order_with_stable_ids():
    events = retail_events(table(ROWS))
    ids = [e.event_id for e in events.interactions]
    assert ids == ["or-536365-85123A-0", "or-536365-85123A-1", "or-536366-22633-0", "or-C536379-22633-0"]
    assert [e.type for e in events.interactions] == ["purchase", "purchase", "purchase", "return"]
    assert events.interactions[-1].quantity == 1 and events.interactions[0].user_id == "17850"
    assert events.skipped == Counter({"no customer id": 1, "negative price": 1})
    assert {i.item_id: i.title for i in events.items} == {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
                                                         "22633": "HAND WARMER UNION JACK"}
    assert retail_events(table(ROWS)).interactions == events.interactions  # deterministic


def test_since_until_and_limit_select_a_slice():
    start = datetime(2010, 12, 1, 8, 27).timestamp()
    events = retail_events(table(ROWS), since=start, limit=1)
    assert [e.event_id for e in events.interactions] == ["or-536366-22633-0"]


def test_contract_rows_are_validated_and_invalid_ones_counted_not_sent():
    settings = KafkaSettings(topic_prefix="p")
    skipped: Counter = Counter()
    rows = [
        {"event_id": "b", "user_id": "u", "item_id": "i", "type": "click", "ts": 1_300_000_100},
        {"event_id": "a", "user_id": "u", "item_id": "i", "type": "view", "ts": 1_300_000_000},
        {"event_id": "c", "user_id": "u", "item_id": "i", "type": "bogus", "ts": 1_300_000_000},
        {"item_id": "i", "title": "A thing"},
        {"something": "else"},
    ]
    messages = contract_messages(rows, settings, since=None, until=None, limit=None, skipped=skipped)
    assert [(m.topic, m.kind) for m in messages] == [("p.catalog", "item"), ("p.interactions", "view"),
                                                    ("p.interactions", "click")]
    assert skipped == Counter({"invalid Interaction: unknown enum value": 1,
                               "unrecognised row (not an interaction, feedback or item)": 1})


def test_pacer_follows_event_time_scaled_by_speedup():
    now = [100.0]
    pacer = Pacer(speedup=10, clock=lambda: now[0])
    assert pacer.delay(1000.0) == 0.0
    now[0] = 101.0
    assert pacer.delay(1030.0) == 2.0  # 30 s of event time = 3 s of wall time, 1 s already passed


def test_item_titles_come_from_priced_lines_and_non_products_are_skipped():
    rows = [("1", "22197", "SMALL POPCORN HOLDER", 1, datetime(2011, 1, 1, 9), 0.85, 1.0),
            ("2", "22197", "POPCORN HOLDER", 1, datetime(2011, 2, 1, 9), 0.85, 1.0),
            ("3", "22197", "damaged", -5, datetime(2011, 3, 1, 9), 0.0, None),  # a stock adjustment's note
            ("4", "POST", "POSTAGE", 1, datetime(2011, 3, 1, 9), 18.0, 1.0)]
    events = retail_events(table(rows))
    assert [(i.item_id, i.title) for i in events.items] == [("22197", "POPCORN HOLDER")]
    assert [e.item_id for e in events.interactions] == ["22197", "22197"]
    assert events.skipped["not a product (postage, fee, manual line)"] == 1
