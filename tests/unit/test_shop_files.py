"""One reader for replay and eval: contract records in every file format, and Online Retail through its mapping."""

from __future__ import annotations

import datetime as dt

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from ops.replay import file_messages
from ops.retail_events import NOT_A_PRODUCT
from ops.shop_files import ShopDataError, load_shop, read_records
from streams.settings import KafkaSettings

T0 = dt.datetime(2011, 3, 1, 10, 0)
T1 = dt.datetime(2011, 3, 1, 10, 1)


def retail_file(path, rows, *, price: bool = True, description: bool = True):
    """Online Retail rows of (InvoiceNo, StockCode, Quantity, InvoiceDate, CustomerID)."""
    invoices, codes, quantities, dates, customers = zip(*rows, strict=True)
    columns = {"InvoiceNo": pa.array(invoices, pa.string()), "StockCode": pa.array(codes, pa.string()),
               "Quantity": pa.array(quantities, pa.int64()), "InvoiceDate": pa.array(dates, pa.timestamp("us")),
               "CustomerID": pa.array(customers, pa.float64())}
    if description:
        columns["Description"] = pa.array([f"ITEM {code} " for code in codes], pa.string())
    if price:
        columns["UnitPrice"] = pa.array([1.5] * len(rows), pa.float64())
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("row, why", [
    (("1", "22423", 2, T0, None), "no customer"),
    (("1", "22423", 0, T0, 1.0), "zero quantity"),
    (("1", "22423", -3, T0, 1.0), "a return"),
    (("C1", "22423", 2, T0, 1.0), "a cancellation"),
    (("1", "POST", 2, T0, 1.0), "postage"),
    (("1", "BANK CHARGES", 2, T0, 1.0), "a fee"),
    (("1", "M", 2, T0, 1.0), "a manual line"),
])
def test_online_retail_rows_that_are_not_purchases_of_products_make_no_basket(tmp_path, row, why):
    shop = load_shop(retail_file(tmp_path / "retail.parquet", [row, ("2", "85123A", 1, T0, 1.0)]))
    assert [b.basket_id for b in shop.baskets] == ["2"] and shop.index.codes == ("85123A",), why
    assert shop.source == "online_retail"


def test_replay_and_eval_read_online_retail_alike(tmp_path):
    path = retail_file(tmp_path / "retail.parquet", [("1", "22423", 1, T0, 7.0), ("1", "POST", 1, T0, 7.0),
                                                     ("C2", "22423", -1, T1, 7.0), ("3", "85123A", 1, T1, 7.0)])
    found = read_records(path)
    assert found.skipped[NOT_A_PRODUCT] == 1
    assert [e.type for e in found.events] == ["purchase", "return", "purchase"]
    messages = file_messages(path, KafkaSettings())
    assert [m.kind for m in messages] == ["item", "item", "purchase", "return", "purchase"]
    shop = load_shop(path)
    assert [(b.user_id, b.items) for b in shop.baskets] == [("7", (0,)), ("7", (1,))]
    assert shop.item_texts() == ["ITEM 22423", "ITEM 85123A"]


def test_online_retail_without_price_or_description_is_still_recognised(tmp_path):
    path = retail_file(tmp_path / "retail.parquet", [("1", "22423", 1, T0, 7.0)], price=False, description=False)
    shop = load_shop(path)
    assert shop.source == "online_retail" and shop.item_texts() == ["22423"]


CATALOG = [{"item_id": "sku-1", "title": "Trail shoe", "description": "Light, 280 g", "category": "Running"},
           {"item_id": "sku-2", "title": "Sock", "schema_version": 1}]
EVENTS = [
    {"event_id": "a", "user_id": "007", "item_id": "sku-1", "type": "purchase", "ts": "2023-04-02T10:00:00Z",
     "session_id": "s1"},
    {"event_id": "b", "user_id": "007", "item_id": "sku-2", "type": "purchase", "ts": "2023-04-02T10:00:00Z"},
    {"event_id": "c", "user_id": "42", "item_id": "sku-2", "type": "view", "ts": "2023-04-01T09:00:00Z"},
    {"event_id": "d", "user_id": "42", "item_id": "sku-2", "type": "purchase", "ts": 1680339600.0},
]


def write_records(path, rows):
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows) + b"not json\n")
        return path
    keys = sorted({key for row in rows for key in row if key != "schema_version"})
    table = pa.table({key: pa.array([_cell(row.get(key)) for row in rows], pa.string()) for key in keys})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pa_csv.write_csv(table, path)
    return path


def _cell(value):
    return None if value is None else str(value)


def test_contract_records_load_the_same_from_jsonl_parquet_and_csv(tmp_path):
    rows = CATALOG + [{**event, "ts": event["ts"] if isinstance(event["ts"], str) else "2023-04-01T09:00:00Z"}
                      for event in EVENTS]
    shops = {suffix: load_shop(write_records(tmp_path / f"shop{suffix}", rows))
             for suffix in (".jsonl", ".parquet", ".csv")}
    for suffix, shop in shops.items():
        assert [(b.user_id, b.items, b.basket_id) for b in shop.baskets] == [("42", (0,), "d"),
                                                                             ("007", (1, 0), "s1")], suffix
        assert shop.index.codes == ("sku-2", "sku-1")
        assert shop.item_texts() == ["Sock", "Trail shoe. Light, 280 g. Running"], suffix
        assert shop.source == "records"
    assert shops[".jsonl"].skipped["invalid json line"] == 1


def test_invalid_rows_are_counted_and_a_file_without_purchases_is_refused(tmp_path):
    path = write_records(tmp_path / "views.jsonl", [EVENTS[2], {"event_id": "x", "user_id": "u"}])
    found = read_records(path)
    assert len(found.events) == 1 and found.skipped["invalid Interaction: missing field"] == 1
    with pytest.raises(ShopDataError, match="no purchases"):
        load_shop(path)
    odd = tmp_path / "shop.xlsx"
    odd.write_text("")
    with pytest.raises(ShopDataError, match="unsupported"):
        load_shop(odd)
