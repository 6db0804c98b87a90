"""Read a shop's history from a file: the records ``recloop replay`` sends and ``recloop eval`` scores.

A file is either

- rows that already are contract records (parquet, CSV or JSONL): interactions, explanation
  feedback and catalog items, told apart by their fields (``explanation_id`` → feedback,
  ``event_id`` or ``type`` → interaction, ``title`` → item); or
- the Online Retail file (parquet or CSV, recognised by its columns), mapped onto the same records by
  :mod:`ops.retail_events`, the one documented mapping and cleaning rule.

Rows that are not valid records are skipped and counted with their reason. :func:`read_records` is
what replay produces from; :func:`load_shop` turns the same records into what the offline
evaluation needs: baskets (:mod:`learner.baskets`) and a text per item.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from learner.baskets import Basket, ItemIndex, baskets_from_interactions, item_texts
from ops.retail_events import looks_like_retail, read_table, retail_events
from streams import records
from streams.records import ExplanationFeedback, Interaction, InvalidRecord, Item

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson", ".json")
#: Record fields that are ids or text, read as strings from a CSV whatever they look like.
TEXT_FIELDS = ("event_id", "user_id", "item_id", "type", "session_id", "rec_id", "explanation_id", "style",
               "reason", "title", "description", "category")


class ShopDataError(ValueError):
    """A file the evaluation cannot use: an unsupported format, or no purchases at all."""


@dataclass
class Records:
    """The catalog items of a file, and its events in event-time order."""

    items: list[Item] = field(default_factory=list)
    events: list[Interaction | ExplanationFeedback] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    source: str = "records"  #: "records" (contract rows) or "online_retail" (the mapping)

    @property
    def interactions(self) -> list[Interaction]:
        return [event for event in self.events if isinstance(event, Interaction)]


def read_records(path: Path, *, since: float | None = None, until: float | None = None,
                 limit: int | None = None) -> Records:
    """The records of ``path``; ``since``/``until`` (epoch seconds, half-open) and ``limit`` select events.

    Catalog items are never filtered by time: the catalogue is state, not an event.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ShopDataError(f"unsupported file {path.name}: use .parquet, .csv or .jsonl")
    if suffix in (".parquet", ".csv") and looks_like_retail(_columns(path)):
        mapped = retail_events(read_table(path), since=since, until=until, limit=limit)
        return Records(mapped.items, list(mapped.interactions), mapped.skipped, source="online_retail")
    skipped: Counter = Counter()
    rows = _jsonl_rows(path, skipped) if suffix in (".jsonl", ".ndjson", ".json") else _table_rows(path)
    return contract_records(rows, since=since, until=until, limit=limit, skipped=skipped)


def contract_records(rows: Iterable[dict], *, since: float | None = None, until: float | None = None,
                     limit: int | None = None, skipped: Counter | None = None) -> Records:
    """Validate rows that are already contract records; invalid ones are counted in ``skipped``, not kept.

    >>> rows = [{"item_id": "i1", "title": "Mug"}, {"event_id": "e2", "user_id": "u", "item_id": "i1",
    ...          "type": "purchase", "ts": "2023-05-01T10:00:00Z"}, {"event_id": "e1"}, {"colour": "red"}]
    >>> found = contract_records(rows)
    >>> [item.title for item in found.items], [e.event_id for e in found.events], sorted(found.skipped)
    (['Mug'], ['e2'], ['invalid Interaction: missing field', 'unrecognised row (not an interaction, feedback or item)'])
    """
    found = Records(skipped=skipped if skipped is not None else Counter())
    for row in rows:
        cls = _record_type(row)
        if cls is None:
            found.skipped["unrecognised row (not an interaction, feedback or item)"] += 1
            continue
        try:
            record = records.from_dict(cls, row)
        except InvalidRecord as exc:
            found.skipped[f"invalid {cls.__name__}: {_reason(str(exc))}"] += 1
            continue
        if isinstance(record, Item):
            found.items.append(record)
            continue
        if (since is not None and record.ts < since) or (until is not None and record.ts >= until):
            continue
        found.events.append(record)
    found.events.sort(key=lambda event: event.ts)
    if limit is not None:
        del found.events[limit:]
    return found


# ------------------------------------------------------------------ what the offline evaluation reads


@dataclass
class Shop:
    """A shop's purchase history as baskets, and its catalogue (item id → the latest :class:`Item` row)."""

    baskets: list[Basket]
    index: ItemIndex
    catalog: dict[str, Item]
    skipped: Counter = field(default_factory=Counter)
    source: str = "records"

    def item_texts(self) -> list[str]:
        """Per item int: title, description and category joined when present (:func:`learner.baskets.item_text`)."""
        return item_texts(self.catalog, self.index)

    def items(self) -> list[tuple[str, str]]:
        """Per item int: ``(item_id, text)``, what :class:`ops.served_recommender.ServedRecommender` is built from."""
        return [(self.index.code_of(i), text) for i, text in enumerate(self.item_texts())]


def load_shop(path: Path) -> Shop:
    """Read ``path`` (contract records or the Online Retail file) into chronological baskets and a catalogue.

    Raises :class:`ShopDataError` when the file cannot be read as records or holds no purchase.
    """
    found = read_records(path)
    index = ItemIndex()
    baskets = baskets_from_interactions(found.interactions, index)
    if not baskets:
        raise ShopDataError(f"{path} holds no purchases (skipped rows: {dict(found.skipped)})")
    catalog = {item.item_id: item for item in found.items}
    log.info("%d baskets, %d items, %d shoppers from %s (%s; skipped: %s)", len(baskets), len(index),
             len({b.user_id for b in baskets}), path, found.source, dict(found.skipped))
    return Shop(baskets, index, catalog, found.skipped, found.source)


# ------------------------------------------------------------------ file readers


def _record_type(row: dict) -> type | None:
    if "explanation_id" in row:
        return ExplanationFeedback
    if "event_id" in row or "type" in row:
        return Interaction
    if "title" in row:
        return Item
    return None


def _reason(error: str) -> str:
    from streams.ingest import error_kind

    return error_kind(error)


def _columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    with path.open("rb") as handle:
        return [c.strip().decode() for c in handle.readline().split(b",")]


def _table_rows(path: Path) -> list[dict]:
    """Rows of a parquet or CSV file as dicts: nulls (missing optional fields) left out, times as epoch seconds.

    In a CSV, id and text columns stay strings (user "007" is not user 7) and an empty cell is a missing field.
    """
    import pyarrow as pa

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        from pyarrow import csv

        types = {name: pa.string() for name in TEXT_FIELDS}
        options = csv.ConvertOptions(column_types=types, strings_can_be_null=True)  # an empty cell is a missing field
        rows = csv.read_csv(path, convert_options=options).to_pylist()
    return [{name: _plain(value) for name, value in row.items() if value is not None} for row in rows]


def _plain(value: object) -> object:
    """A timestamp cell as epoch seconds (naive = UTC), anything else unchanged.

    >>> _plain(datetime(2023, 5, 1, 10, 0)), _plain("x")
    (1682935200.0, 'x')
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    return value


def _jsonl_rows(path: Path, skipped: Counter) -> list[dict]:
    rows = []
    with path.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                skipped["invalid json line"] += 1
    return rows
