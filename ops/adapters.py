"""``recloop adapters``: the adapters the learner published, and putting an older one back in service.

Adapters live under ``<RECLOOP_HOME>/adapters/<version>/`` (see :mod:`learner.artifacts`). A rollback
never rewrites history: it republishes the chosen version's exact weights as a *new* version
(``v<next>-rollback-<old>``) whose parent is the adapter serving now, freshly signed. Serving
workers take it like any update; the learner adopts it and continues training from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from learner import artifacts
from learner.adapter_store import ROLLBACK_MARK, StoredAdapter, mark_published, next_version, stored_adapters
from learner.durable import fsync_dir
from streams import records
from streams.records import AdapterUpdate
from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES, MODEL_UPDATES

log = logging.getLogger(__name__)


class AdapterNotFound(LookupError):
    """No complete adapter of that version in this home."""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def find_adapter(home: Path, version: str) -> StoredAdapter:
    for stored in stored_adapters(home):
        if stored.manifest.version == version:
            return stored
    raise AdapterNotFound(f"no adapter {version!r} under {artifacts.adapters_dir(home)}")


def current_version(home: Path, latest_on_topic: str | None = None) -> str | None:
    """The adapter serving workers run: the newest update on the topic when known, else the newest published here."""
    if latest_on_topic is not None:
        return latest_on_topic
    published = [a for a in stored_adapters(home) if a.published]
    return published[-1].manifest.version if published else None


def list_adapters(home: Path, latest_on_topic: str | None = None) -> list[dict]:
    """One row per stored adapter, oldest first."""
    current = current_version(home, latest_on_topic)
    return [{"version": a.manifest.version, "parent": a.manifest.parent, "created_at": _when(a.manifest.created_at),
             "published": a.published, "current": a.manifest.version == current,
             "ndcg_at_10": a.manifest.metrics.get("ndcg_at_10"),
             "serving_ndcg_at_10": a.manifest.metrics.get("serving_ndcg_at_10"),
             "window_examples": a.manifest.metrics.get("window_examples")}
            for a in stored_adapters(home)]


def show_adapter(home: Path, version: str) -> dict:
    """Everything about one adapter: manifest, configs, files, and the digest its payload packs to."""
    stored = find_adapter(home, version)
    payload = artifacts.pack(stored.path)
    return {**asdict(stored.manifest), "created_at_utc": _when(stored.manifest.created_at),
            "published": stored.published, "path": str(stored.path),
            "files": {p.name: p.stat().st_size for p in sorted(stored.path.iterdir())},
            "adapter_config": json.loads((stored.path / artifacts.ADAPTER_CONFIG).read_text()),
            "model_config": artifacts.read_model_config(stored.path).to_dict(),
            "payload_bytes": len(payload), "payload_sha256": artifacts.sha256(payload)}


def copy_as_new_version(home: Path, version: str, *, parent: str | None, after: str | None = None) -> Path:
    """Write ``version``'s weights as a new adapter directory (new id, ``parent``), atomically and fsynced. The
    id comes after every version here and after ``after`` (the topic's newest): serving refuses any other."""
    source = find_adapter(home, version)
    new_version = next_version(home, suffix=f"{ROLLBACK_MARK}{version}", after=after)
    directory = artifacts.adapters_dir(home)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{new_version}-", dir=directory))
    try:
        for name in (artifacts.ADAPTER_CONFIG, artifacts.ADAPTER_WEIGHTS, artifacts.HEAD_WEIGHTS):
            shutil.copyfile(source.path / name, tmp / name)
        manifest = artifacts.Manifest(version=new_version, parent=parent,
                                      base_fingerprint=source.manifest.base_fingerprint, created_at=time.time(),
                                      metrics=dict(source.manifest.metrics))
        (tmp / artifacts.MANIFEST).write_text(manifest.to_json())
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        dest = directory / new_version
        os.rename(tmp, dest)
        fsync_dir(directory)
        return dest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


async def latest_update(settings: KafkaSettings) -> AdapterUpdate | None:
    """The newest record on the updates topic (what serving workers run), or None when it is empty."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**settings.aiokafka_options(), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=MAX_MESSAGE_BYTES, fetch_max_bytes=MAX_MESSAGE_BYTES)
    await consumer.start()
    try:
        name = settings.topic(MODEL_UPDATES.name)
        if name not in await consumer.topics():
            raise ValueError(f"topic {name} does not exist: run `recloop topics create` "
                             "(or check RECLOOP_TOPIC_PREFIX)")
        partition = TopicPartition(name, 0)
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        if end == 0:
            return None
        consumer.seek(partition, end - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            batches = await consumer.getmany(partition, timeout_ms=1000)
            messages = batches.get(partition, [])
            if messages:
                return records.decode(AdapterUpdate, messages[-1].value)
        raise TimeoutError(f"could not read the newest record of {partition.topic}")
    finally:
        await consumer.stop()


async def send_update(settings: KafkaSettings, update: AdapterUpdate) -> None:
    await send_raw_updates(settings, [records.encode(update)])


async def send_raw_updates(settings: KafkaSettings, raws: list[bytes]) -> None:
    """Publish raw records on the updates topic, each acknowledged before the next (also what the fault benchmark
    sends: records that need not be valid)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.aiokafka_options(), acks="all", enable_idempotence=True,
                                max_request_size=MAX_MESSAGE_BYTES)
    await producer.start()
    try:
        for raw in raws:
            await producer.send_and_wait(settings.topic(MODEL_UPDATES.name), raw, key=b"adapter")
    finally:
        await producer.stop()


def rollback(settings: KafkaSettings, version: str, key: bytes) -> AdapterUpdate:
    """Republish ``version``'s weights as the newest adapter: new id, parent = the current one, freshly signed."""
    home = settings.home
    find_adapter(home, version)  # fail before touching anything
    latest = asyncio.run(latest_update(settings))
    parent = current_version(home, latest.version if latest is not None else None)
    if parent == version:
        raise ValueError(f"{version} is already the current adapter")
    path = copy_as_new_version(home, version, parent=parent, after=latest.version if latest is not None else None)
    update = artifacts.make_update(path, key)
    asyncio.run(send_update(settings, update))
    mark_published(home, update.version)
    log.info("rolled back to %s as %s (parent %s)", version, update.version, parent)
    return update
