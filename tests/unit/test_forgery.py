"""Every forged, tampered or replayed adapter update is refused, each for its own reason (no broker)."""

from __future__ import annotations

import asyncio

import pytest

from learner import artifacts
from ops.forgery import FORGERY_KINDS, forgeries
from serving.updates import _REJECTION_KINDS
from streams.records import AdapterUpdate, decode, encode
from tests.unit.test_serving_app import make_worker, publishable

KEY = b"unit-test-key"


def test_each_forgery_is_refused_for_its_own_reason_and_the_current_version_keeps_serving(base, tmp_path):
    worker = make_worker(base, ready=False)
    old, current = publishable(base, tmp_path / "a", "v000001"), publishable(base, tmp_path / "b", "v000002")
    for raw in (old, current):
        assert asyncio.run(worker.updater.apply(raw)).accepted
    adapter_dir = tmp_path / "b" / "adapters" / "v000002"
    forged = forgeries(adapter_dir, worker.updater.key, newer="v000100", older=decode(AdapterUpdate, old),
                       work=tmp_path / "forged")
    assert forged.keys() == FORGERY_KINDS.keys()
    kinds = []
    worker.updater.listener.rejected = lambda kind, reason: kinds.append(kind)
    for name, raw in forged.items():
        outcome = asyncio.run(worker.updater.apply(raw))
        assert not outcome.accepted, name
        assert worker.holder.current.version == "v000002"
    assert kinds == list(FORGERY_KINDS.values())
    # the genuine record the forgeries were made from is accepted: only the forgery stopped each one
    genuine = tmp_path / "forged" / "genuine" / "v000100"
    assert asyncio.run(worker.updater.apply(encode(artifacts.make_update(genuine, worker.updater.key)))).accepted


@pytest.mark.parametrize("name", sorted(FORGERY_KINDS))
def test_forgery_kinds_are_rejection_kinds_serving_counts(name):
    assert FORGERY_KINDS[name] in {kind for _, kind in _REJECTION_KINDS} | {"invalid_record"}
