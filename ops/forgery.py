"""Hostile adapter updates, for the fault benchmark and its tests: every way a record on
``recloop.model-updates`` can be forged, tampered with or replayed.

Each forgery starts from a genuine adapter directory re-numbered *above* the version that serves, so
only the check it targets can stop it (a lower number would be refused as ``not newer`` whatever else
is wrong). The replay is the exception by design: a genuine, validly signed old record sent again.

>>> sorted(FORGERY_KINDS)
['corrupted_payload', 'garbage', 'replayed_older', 'resigned_sha', 'unsigned', 'wrong_base', 'wrong_key']
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import orjson

from learner import artifacts
from streams.records import AdapterUpdate, encode

#: What each forgery is and the rejection kind a serving worker must count it as
#: (:func:`serving.updates.rejection_kind`).
FORGERY_KINDS: dict[str, str] = {
    "unsigned": "invalid_record",  # no signature at all: the record parser already refuses it
    "wrong_key": "signature",  # signed, with a key that is not the deployment's
    "corrupted_payload": "sha256",  # bytes flipped in transit, digest left as it was
    "resigned_sha": "signature",  # bytes altered and the digest recomputed to match: the HMAC still fails
    "wrong_base": "base_fingerprint",  # validly signed, but trained on another base model
    "replayed_older": "replayed",  # a genuine old record sent again: versions strictly increase
    "garbage": "invalid_record",  # not a record at all
}


def renumbered(adapter_dir: Path, version: str, work: Path, *, base_fingerprint: str | None = None) -> Path:
    """A copy of ``adapter_dir`` whose manifest says ``version`` (and ``base_fingerprint``, when given)."""
    dest = work / version
    shutil.copytree(adapter_dir, dest)
    manifest = artifacts.read_manifest(dest)
    changes = {"version": version, **({"base_fingerprint": base_fingerprint} if base_fingerprint else {})}
    (dest / artifacts.MANIFEST).write_text(dataclasses.replace(manifest, **changes).to_json())
    return dest


def _flip(payload: bytes) -> bytes:
    middle = len(payload) // 2
    return payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1:]


def _with_fields(update: AdapterUpdate, **fields: object) -> bytes:
    """``update`` encoded, then fields overwritten in the JSON (what an attacker sends need not be a valid record)."""
    return orjson.dumps({**orjson.loads(encode(update)), **fields})


def forgeries(adapter_dir: Path, key: bytes, *, newer: str, older: AdapterUpdate, work: Path) -> dict[str, bytes]:
    """The raw records of every :data:`FORGERY_KINDS` entry, forged from the genuine ``adapter_dir``.

    ``newer``: a version number above the one serving; ``older``: a genuine record published earlier.
    """
    work.mkdir(parents=True, exist_ok=True)
    genuine = artifacts.make_update(renumbered(adapter_dir, newer, work / "genuine"), key)
    tampered = _flip(genuine.payload)
    other_base = renumbered(adapter_dir, newer, work / "other-base", base_fingerprint="0" * 64)
    return {
        "unsigned": _with_fields(genuine, signature=""),
        "wrong_key": encode(artifacts.make_update(work / "genuine" / newer, b"not-this-deployment's-key")),
        "corrupted_payload": encode(dataclasses.replace(genuine, payload=tampered)),
        "resigned_sha": encode(dataclasses.replace(genuine, payload=tampered, sha256=artifacts.sha256(tampered))),
        "wrong_base": encode(artifacts.make_update(other_base, key)),
        "replayed_older": encode(older),
        "garbage": b"\x00 not an adapter update",
    }
