"""JSON Schemas and HTTP request models, derived from the record declarations in :mod:`streams.records`.

Each record field is declared once, with a :class:`~streams.records.Rule` that both reads it and
describes it. From those declarations this module builds

- one JSON Schema file per record type in ``schemas/`` (draft 2020-12), for producers in any language;
- pydantic request models for the serving API (:func:`request_model`), whose JSON Schema goes into
  the OpenAPI document and whose validation calls the same rules.

``schemas/`` is checked in; ``tests/unit/test_record_schemas.py`` fails when it differs from the code.
After changing a record::

    python -m streams.record_schemas          # rewrite schemas/*.schema.json
    python -m streams.record_schemas --check  # exit 1 when a checked-in schema is stale

>>> record_schema(records.Interaction)["required"]
['event_id', 'user_id', 'item_id', 'type', 'ts']
>>> schema_file(records.ExplanationFeedback).name
'explanation_feedback.schema.json'
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model

from streams import records
from streams.records import InvalidRecord, Rule, fields_of, object_schema
from streams.topics import ALL_TOPICS

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
GENERATED_BY = "python -m streams.record_schemas"


def schema_file(cls: type, directory: Path = SCHEMA_DIR) -> Path:
    """``schemas/<record_name>.schema.json``."""
    return directory / f"{re.sub(r'(?<!^)(?=[A-Z])', '_', cls.__name__).lower()}.schema.json"


def record_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of one record type as a topic's value: exactly what :func:`records.decode` accepts.

    The one exception is stated in the schema: an explanation policy's posteriors may name only the
    styles listed in its ``styles`` (a rule between two fields, which JSON Schema cannot express).
    """
    topic = next((t for t in ALL_TOPICS if t.record is cls), None)
    doc = " ".join((cls.__doc__ or cls.__name__).split("\n\n")[0].split()).replace("``", "`")
    where = f" Topic `recloop.{topic.name}`, message key: {topic.key}." if topic is not None else ""
    description = (f"{doc}{where} JSON, at most {cls.max_bytes} bytes; `null` is the same as leaving a field out; "
                   f"fields not listed here are ignored. Generated from streams/records.py by `{GENERATED_BY}`.")
    schema: dict[str, Any] = {"$schema": DIALECT, "title": cls.__name__, "description": description}
    schema.update(object_schema(cls))
    if topic is not None:
        schema["x-recloop-topic"] = f"recloop.{topic.name}"
        schema["x-recloop-key"] = topic.key
    return schema


def render(schema: dict[str, Any]) -> str:
    """The text of a schema file: stable key order as declared, two-space indent, ASCII, newline at the end."""
    return json.dumps(schema, indent=2, ensure_ascii=True) + "\n"


def expected_files(directory: Path = SCHEMA_DIR) -> dict[Path, str]:
    return {schema_file(cls, directory): render(record_schema(cls)) for cls in records.RECORD_TYPES}


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every record's schema file; returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for path, text in expected_files(directory).items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """What differs between ``directory`` and the code: missing, outdated or unknown schema files."""
    expected = expected_files(directory)
    problems = [f"{path.name}: missing" for path in expected if not path.exists()]
    problems += [f"{path.name}: differs from streams/records.py" for path, text in expected.items()
                 if path.exists() and path.read_text() != text]
    problems += [f"{path.name}: no record type has this schema" for path in sorted(directory.glob("*.schema.json"))
                 if path not in expected]
    return problems


# --------------------------------------------------------------------------- HTTP request models


def request_model(cls: type, name: str, *, server_filled: Iterable[str] = (), rules: dict[str, Rule] | None = None,
                  doc: str | None = None) -> type[BaseModel]:
    """A pydantic model of record ``cls`` as an HTTP request body, for the OpenAPI document.

    The same fields and rules as the record, and nothing else: other properties are refused (a typo in a
    hand-written body is an error, not silently dropped). ``server_filled``: required fields the server
    fills in when the body leaves them out; ``rules``: fields the endpoint reads by a narrower rule.
    Validating with the model calls the record's rules, so it accepts exactly what the endpoint accepts.
    """
    server_filled = tuple(server_filled)
    notes = {field: "filled in by the server when left out" for field in server_filled}
    schema = object_schema(cls, closed=True, optional=server_filled, rules=rules, notes=notes)
    fields: dict[str, Any] = {}
    for f in fields_of(cls):
        rule = (rules or {}).get(f.name, f.rule)
        required = f.name in schema["required"]
        checked = Annotated[Any, BeforeValidator(_reader(rule, f.name, required)),
                            WithJsonSchema(schema["properties"][f.name])]
        fields[f.name] = (checked, ...) if required else (checked, Field(default=None))
    config = ConfigDict(extra="forbid", title=name, json_schema_extra={"description": doc} if doc else None)
    return create_model(name, __config__=config, __doc__=doc, **fields)


def _reader(rule: Rule, name: str, required: bool):
    def read(value: Any) -> Any:
        if value is None:
            if required:
                raise InvalidRecord(f"missing field {name!r}")
            return None
        return rule.check(value, name)

    return read


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        problems = stale(SCHEMA_DIR)
        for problem in problems:
            print(f"schemas/{problem}; run `{GENERATED_BY}`", file=sys.stderr)
        return 1 if problems else 0
    if args:
        print(f"usage: {GENERATED_BY} [--check]", file=sys.stderr)
        return 2
    for path in write(SCHEMA_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
