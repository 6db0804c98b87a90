"""Cleaning and basket building on tiny hand-made transaction tables."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learner.baskets import (
    Basket,
    ItemIndex,
    baskets_from_rows,
    clean_transactions,
    epoch_seconds,
    item_descriptions,
    load_baskets,
    timestamp_groups,
)

T0 = dt.datetime(2011, 3, 1, 10, 0)
T1 = dt.datetime(2011, 3, 1, 10, 1)


def transactions(*rows: tuple) -> pa.Table:
    """Rows of (InvoiceNo, StockCode, Quantity, InvoiceDate, CustomerID), with made-up descriptions."""
    invoices, codes, quantities, dates, customers = zip(*rows, strict=True) if rows else ((),) * 5
    return pa.table({
        "InvoiceNo": pa.array(invoices, pa.string()),
        "StockCode": pa.array(codes, pa.string()),
        "Description": pa.array([f"ITEM {code} " for code in codes], pa.string()),
        "Quantity": pa.array(quantities, pa.int64()),
        "InvoiceDate": pa.array(dates, pa.timestamp("us")),
        "CustomerID": pa.array(customers, pa.float64()),
    })


@pytest.mark.parametrize("row, why", [
    (("1", "22423", 2, T0, None), "no customer (null)"),
    (("1", "22423", 2, T0, float("nan")), "no customer (NaN)"),
    (("1", "22423", 0, T0, 1.0), "zero quantity"),
    (("1", "22423", -3, T0, 1.0), "a return"),
    (("C1", "22423", 2, T0, 1.0), "a cancellation"),
    (("1", "POST", 2, T0, 1.0), "postage"),
    (("1", "BANK CHARGES", 2, T0, 1.0), "a fee"),
    (("1", "M", 2, T0, 1.0), "a manual line"),
])
def test_clean_drops(row, why):
    kept = clean_transactions(transactions(row, ("2", "85123A", 1, T0, 1.0)))
    assert kept.column("InvoiceNo").to_pylist() == ["2"], why


def test_clean_keeps_real_purchases_with_letter_suffixes():
    kept = clean_transactions(transactions(("1", "85123A", 6, T0, 17850.0), ("1", "10002", 1, T0, 17850.0)))
    assert kept.num_rows == 2


def test_one_customer_one_minute_is_one_basket_of_distinct_items():
    table = transactions(("1", "A1", 1, T0, 7.0), ("1", "B1", 1, T0, 7.0), ("2", "A1", 5, T0, 7.0),
                         ("3", "C1", 1, T0, 8.0), ("4", "B1", 1, T1, 7.0))
    index = ItemIndex()
    baskets = baskets_from_rows(table, index)
    ts0, ts1 = epoch_seconds(pa.array([T0, T1])).tolist()
    assert baskets == [Basket("7", ts0, (0, 1), "1"), Basket("8", ts0, (2,), "3"), Basket("7", ts1, (1,), "4")]
    assert index.codes == ("A1", "B1", "C1")


def test_baskets_come_out_in_time_order_whatever_the_file_order():
    table = transactions(("9", "B1", 1, T1, 2.0), ("8", "A1", 1, T0, 3.0), ("7", "C1", 1, T0, 1.0))
    baskets = baskets_from_rows(table, ItemIndex())
    assert [(b.user_id, b.invoice) for b in baskets] == [("1", "7"), ("3", "8"), ("2", "9")]
    assert [b.items for b in baskets] == [(0,), (1,), (2,)]  # ints follow first purchase, so "seen" is a prefix


def test_load_baskets_reads_cleans_and_groups(tmp_path):
    path = tmp_path / "retail.parquet"
    pq.write_table(transactions(("1", "22423", 1, T0, 7.0), ("C2", "22423", -1, T1, 7.0), ("3", "POST", 1, T1, 7.0)),
                   path)
    baskets, index = load_baskets(path)
    assert [b.items for b in baskets] == [(0,)] and index.codes == ("22423",)


def test_timestamp_groups_split_on_time_only():
    baskets = [Basket("a", 1.0, (0,), "x"), Basket("b", 1.0, (0,), "y"), Basket("a", 5.0, (1,), "z")]
    assert [len(group) for group in timestamp_groups(baskets)] == [2, 1]
    assert list(timestamp_groups([])) == []


def test_item_index_round_trip():
    index = ItemIndex()
    assert [index.add(code) for code in ("X", "Y", "X")] == [0, 1, 0]
    assert index.code_of(index.index_of("Y")) == "Y" and "Z" not in index and index.index_of("Z") == -1


def test_item_descriptions_are_stripped_and_skip_unknown():
    table = pa.table({"StockCode": ["A", "A", "B"], "Description": ["Unknown", " MUG  ", None]})
    assert item_descriptions(table, ItemIndex(["A", "B"])) == ["MUG", ""]


def test_basket_is_frozen():
    basket = Basket("a", 1.0, (0,), "x")
    with pytest.raises(AttributeError):
        basket.user_id = "b"  # type: ignore[misc]
