"""Basket building from contract interactions, the item index and item texts, on tiny hand-made records."""

from __future__ import annotations

import pytest

from learner.baskets import Basket, ItemIndex, baskets_from_interactions, item_texts, timestamp_groups
from streams.records import Interaction, Item

T0, T1 = 1_700_000_000.0, 1_700_000_060.0


def event(n: int, user: str, item: str, ts: float, kind: str = "purchase", session: str | None = None,
          quantity: int | None = 1) -> Interaction:
    return Interaction(f"e{n}", user, item, kind, ts, session_id=session, quantity=quantity)


@pytest.mark.parametrize("kept, why", [
    (event(1, "u", "A", T0, kind="view"), "a view"),
    (event(1, "u", "A", T0, kind="add_to_cart"), "an add to cart"),
    (event(1, "u", "A", T0, kind="return"), "a return"),
    (event(1, "u", "A", T0, quantity=0), "zero quantity"),
])
def test_only_purchases_make_baskets(kept, why):
    index = ItemIndex()
    baskets = baskets_from_interactions([kept, event(2, "u", "B", T0)], index)
    assert [b.items for b in baskets] == [(0,)] and index.codes == ("B",), why


def test_a_missing_quantity_is_one_unit():
    assert len(baskets_from_interactions([event(1, "u", "A", T0, quantity=None)], ItemIndex())) == 1


def test_one_shopper_one_timestamp_is_one_basket_of_distinct_items():
    events = [event(1, "7", "A1", T0, session="1"), event(2, "7", "B1", T0, session="1"),
              event(3, "7", "A1", T0, session="2"), event(4, "8", "C1", T0, session="3"),
              event(5, "7", "B1", T1, session="4")]
    index = ItemIndex()
    baskets = baskets_from_interactions(events, index)
    assert baskets == [Basket("7", T0, (0, 1), "1"), Basket("8", T0, (2,), "3"), Basket("7", T1, (1,), "4")]
    assert index.codes == ("A1", "B1", "C1")


def test_baskets_come_out_in_time_order_whatever_the_input_order():
    events = [event(9, "2", "B1", T1), event(8, "3", "A1", T0), event(7, "1", "C1", T0)]
    baskets = baskets_from_interactions(events, ItemIndex())
    assert [(b.user_id, b.basket_id) for b in baskets] == [("1", "e7"), ("3", "e8"), ("2", "e9")]  # no session
    assert [b.items for b in baskets] == [(0,), (1,), (2,)]  # ints follow first purchase, so "seen" is a prefix


def test_timestamp_groups_split_on_time_only():
    baskets = [Basket("a", 1.0, (0,), "x"), Basket("b", 1.0, (0,), "y"), Basket("a", 5.0, (1,), "z")]
    assert [len(group) for group in timestamp_groups(baskets)] == [2, 1]
    assert list(timestamp_groups([])) == []


def test_item_index_round_trip():
    index = ItemIndex()
    assert [index.add(code) for code in ("X", "Y", "X")] == [0, 1, 0]
    assert index.code_of(index.index_of("Y")) == "Y" and "Z" not in index and index.index_of("Z") == -1


def test_item_texts_join_what_the_catalog_has_and_fall_back_to_the_id():
    catalog = {"A": Item("A", " MUG ", description="White, 300 ml", category="Kitchen"),
               "B": Item("B", "CUP", description="  "), "C": Item("C", "BOWL", category="Kitchen")}
    assert item_texts(catalog, ItemIndex(["A", "B", "C", "D"])) == [
        "MUG. White, 300 ml. Kitchen", "CUP", "BOWL. Kitchen", "D"]


def test_basket_is_frozen():
    basket = Basket("a", 1.0, (0,), "x")
    with pytest.raises(AttributeError):
        basket.user_id = "b"  # type: ignore[misc]
