"""Adapter artifacts: saved atomically, packed into one signed payload, verified before use.

An adapter directory ``<root>/adapters/<version>/`` holds:

* ``adapter_config.json``, ``adapter_model.safetensors`` — standard PEFT LoRA files
  (``save_pretrained``), loadable by ``PeftModel.from_pretrained`` on the same base;
* ``head.safetensors`` — the fusion head; its metadata key ``recloop`` holds the
  :class:`~learner.model.ModelConfig` the adapter was trained with;
* ``manifest.json`` — ``{version, parent, base_fingerprint, created_at, metrics}``;
* optionally ``item_vectors.safetensors`` — the catalogue's item vectors under this adapter, one
  row per distinct item text (the texts are its ``recloop`` metadata). Re-encoding a catalogue of
  4k titles costs ~20 s of CPU, so shipping the vectors lets a serving worker swap versions in
  well under a second; a vector depends only on (adapter, text), so it is keyed by text, not by
  any process's item index.

The payload on ``recloop.model-updates`` is one safetensors file: tensors ``adapter/<name>``
and ``head/<name>`` plus one metadata entry with the JSON files, canonicalised so the same
directory always packs to the same bytes. Safetensors cannot carry code, unlike pickles or
tar paths, so even an unverified payload is safe to parse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file

from learner.durable import fsync_dir
from learner.encoder import Base
from learner.model import ModelConfig, RankingModel
from streams.records import AdapterUpdate

PAYLOAD_FORMAT = "recloop-adapter/1"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
MANIFEST = "manifest.json"
ITEM_VECTORS = "item_vectors.safetensors"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class AdapterRejected(Exception):
    """An adapter that must not be loaded; ``reason`` says why, for logs and the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """Where an adapter comes from: its parent version and the exact base it was trained on."""

    version: str
    parent: str | None
    base_fingerprint: str
    created_at: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            version=str(data["version"]),
            parent=None if data.get("parent") is None else str(data["parent"]),
            base_fingerprint=str(data["base_fingerprint"]),
            created_at=float(data["created_at"]),
            metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
        )


class SignedUpdate(Protocol):
    """The fields of :class:`streams.records.AdapterUpdate` that verification reads."""

    version: str
    base_fingerprint: str
    sha256: str
    signature: str
    payload: bytes


# --------------------------------------------------------------------------- files


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(directory)


def _publish_dir(tmp: Path, dest: Path) -> Path:
    """fsync ``tmp`` and rename it to ``dest``: readers see a whole adapter or none."""
    _fsync_tree(tmp)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def _check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise ValueError(f"adapter version {version!r} must match {_VERSION.pattern}")
    return version


def adapters_dir(root: str | Path) -> Path:
    return Path(root) / "adapters"


def save_adapter(
    model: RankingModel,
    root: str | Path,
    version: str,
    *,
    parent: str | None = None,
    metrics: dict[str, float] | None = None,
    created_at: float | None = None,
    with_item_vectors: bool = False,
) -> Path:
    """Write ``model``'s adapter and head to ``<root>/adapters/<version>/`` atomically; versions are immutable.

    ``with_item_vectors`` also stores the model's cached item vectors as they are (refresh them
    first if training left them stale), so serving can skip re-encoding the catalogue.
    """
    dest = adapters_dir(root) / _check_version(version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise FileExistsError(f"adapter {version} already exists at {dest}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=dest.parent))
    try:
        model.encoder.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card; not part of the artifact
        head = {name: t.detach().cpu().contiguous() for name, t in model.head.state_dict().items()}
        save_file(head, tmp / HEAD_WEIGHTS, metadata={"recloop": model.config.to_json()})
        if with_item_vectors and model.n_items:
            _save_item_vectors(tmp, *_distinct_text_vectors(model.item_texts, model.item_vectors))
        manifest = Manifest(
            version=version,
            parent=parent,
            base_fingerprint=model.base_fingerprint,
            created_at=time.time() if created_at is None else float(created_at),
            # JSON and the AdapterUpdate record only carry finite numbers
            metrics={k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)},
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
        return _publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _distinct_text_vectors(texts: list[str], vectors: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """One row per distinct text (first occurrence), on the CPU.

    Stored as float16: the vectors are unit length, so a cosine moves by ~1e-4 at most, and the
    payload every serving worker decodes on each update is half the size (3 MB for 4k MiniLM items).
    """
    first: dict[str, int] = {}
    for row, text in enumerate(texts):
        first.setdefault(text, row)
    rows = torch.tensor(list(first.values()), dtype=torch.long)
    return list(first), vectors.detach().to("cpu", torch.float16)[rows].contiguous()


def _save_item_vectors(directory: Path, texts: list[str], vectors: torch.Tensor) -> None:
    save_file({"vectors": vectors}, directory / ITEM_VECTORS, metadata={"recloop": json.dumps(texts)})


def _read_item_vectors(adapter_dir: Path) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """The stored item texts and vectors (float16, as shipped), or ``((), None)``."""
    path = adapter_dir / ITEM_VECTORS
    if not path.is_file():
        return (), None
    blob = path.read_bytes()
    return tuple(json.loads(_safetensors_metadata(blob))), load(blob)["vectors"]


def read_manifest(adapter_dir: str | Path) -> Manifest:
    return Manifest.from_dict(json.loads((Path(adapter_dir) / MANIFEST).read_text()))


def read_model_config(adapter_dir: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored with the head."""
    return ModelConfig.from_dict(json.loads(_safetensors_metadata((Path(adapter_dir) / HEAD_WEIGHTS).read_bytes())))


# --------------------------------------------------------------------------- payload


def _canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace, and PEFT's ``target_modules`` (a set when saved) sorted."""
    if isinstance(data, dict) and isinstance(data.get("target_modules"), list):
        data = {**data, "target_modules": sorted(data["target_modules"])}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _safetensors_metadata(blob: bytes) -> str:
    """The ``recloop`` metadata entry of a safetensors blob, read from its JSON header."""
    try:
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + length])
        return header["__metadata__"]["recloop"]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise AdapterRejected(f"malformed payload: {exc.__class__.__name__}") from None


def pack(adapter_dir: str | Path) -> bytes:
    """One deterministic safetensors payload holding the whole adapter directory."""
    adapter_dir = Path(adapter_dir)
    tensors = {f"adapter/{k}": v for k, v in load_file(adapter_dir / ADAPTER_WEIGHTS).items()}
    tensors |= {f"head/{k}": v for k, v in load_file(adapter_dir / HEAD_WEIGHTS).items()}
    contents = {
        "format": PAYLOAD_FORMAT,
        "manifest": json.loads((adapter_dir / MANIFEST).read_text()),
        "adapter_config": json.loads(_canonical_json(json.loads((adapter_dir / ADAPTER_CONFIG).read_text()))),
        "model_config": json.loads(read_model_config(adapter_dir).to_json()),
    }
    item_texts, item_vectors = _read_item_vectors(adapter_dir)
    if item_vectors is not None:
        tensors["items/vectors"] = item_vectors
        contents["item_texts"] = list(item_texts)
    # A single metadata key: safetensors may write several in any order, which would break determinism.
    return save(dict(sorted(tensors.items())), metadata={"recloop": _canonical_json(contents)})


@dataclass(frozen=True)
class Unpacked:
    """A parsed payload, not yet written anywhere."""

    manifest: Manifest
    adapter_config: dict[str, Any]
    model_config: ModelConfig
    adapter: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    #: Distinct item texts and their vectors under this adapter, when the publisher shipped them.
    item_texts: tuple[str, ...] = ()
    item_vectors: torch.Tensor | None = None


def parse(payload: bytes) -> Unpacked:
    """Read a payload into memory, raising :class:`AdapterRejected` if it is not one."""
    contents = json.loads(_safetensors_metadata(payload))
    if not isinstance(contents, dict) or contents.get("format") != PAYLOAD_FORMAT:
        raise AdapterRejected(f"unknown payload format {str(contents.get('format'))[:40]!r}"
                              if isinstance(contents, dict) else "malformed payload")
    try:
        tensors = load(payload)
        item_texts = tuple(str(t) for t in contents.get("item_texts") or ())
        item_vectors = tensors.get("items/vectors")
        if (item_vectors is None) != (not item_texts) or (
                item_vectors is not None and (item_vectors.ndim != 2 or item_vectors.shape[0] != len(item_texts))):
            raise ValueError("item vectors do not match the item texts")
        return Unpacked(
            manifest=Manifest.from_dict(contents["manifest"]),
            adapter_config=dict(contents["adapter_config"]),
            model_config=ModelConfig.from_dict(contents["model_config"]),
            adapter={k.removeprefix("adapter/"): v for k, v in tensors.items() if k.startswith("adapter/")},
            head={k.removeprefix("head/"): v for k, v in tensors.items() if k.startswith("head/")},
            item_texts=item_texts,
            item_vectors=None if item_vectors is None else item_vectors.float(),
        )
    except (KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise AdapterRejected(f"malformed payload: {exc.__class__.__name__}: {str(exc)[:200]}") from None


def unpack(payload: bytes, dest: str | Path) -> Path:
    """Write a payload back to an adapter directory at ``dest``, atomically.

    Idempotent: if ``dest`` already holds exactly this payload it is left alone (replaying the
    compacted updates topic after a restart delivers the same versions again).
    """
    dest = Path(dest)
    if dest.exists():
        if pack(dest) == payload:
            return dest
        raise FileExistsError(f"{dest} holds a different adapter")
    content = parse(payload)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(content.adapter_config, sort_keys=True, indent=2))
        save_file(content.adapter, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        save_file(content.head, tmp / HEAD_WEIGHTS, metadata={"recloop": content.model_config.to_json()})
        if content.item_vectors is not None:
            _save_item_vectors(tmp, list(content.item_texts), content.item_vectors.half())
        (tmp / MANIFEST).write_text(content.manifest.to_json())
        return _publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- trust


def sha256(payload: bytes) -> str:
    """Hex digest that travels with the payload, so corruption is caught before anything is parsed.

    >>> sha256(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(payload).hexdigest()


def _key_bytes(key: bytes | str) -> bytes:
    key = key.encode() if isinstance(key, str) else key
    if not key:
        raise ValueError("an adapter signing key must not be empty")
    return key


def sign(payload: bytes, key: bytes | str) -> str:
    """HMAC-SHA256 of the payload, hex: only holders of the shared key can publish adapters.

    >>> sign(b"adapter", "k")[:16]
    '65c0247f764dc4ce'
    """
    return hmac.new(_key_bytes(key), payload, hashlib.sha256).hexdigest()


def make_update(adapter_dir: str | Path, key: bytes | str) -> AdapterUpdate:
    """The record to publish on ``recloop.model-updates`` for a saved adapter."""
    payload = pack(adapter_dir)
    manifest = read_manifest(adapter_dir)
    return AdapterUpdate(
        version=manifest.version,
        parent=manifest.parent,
        base_fingerprint=manifest.base_fingerprint,
        created_at=manifest.created_at,
        metrics=manifest.metrics,
        sha256=sha256(payload),
        signature=sign(payload, key),
        payload=payload,
    )


def check_compatible(content: Unpacked, model: RankingModel) -> None:
    """Raise :class:`AdapterRejected` unless ``content`` fits ``model`` tensor for tensor."""
    if content.adapter_config.get("peft_type") != "LORA":
        raise AdapterRejected(f"incompatible config: peft_type {content.adapter_config.get('peft_type')!r} is not LORA")
    differences = model.config.incompatibilities(content.model_config)
    if differences:
        raise AdapterRejected("incompatible config: " + "; ".join(differences))
    for name, expected in (("adapter", model.adapter_state()), ("head", model.head.state_dict())):
        given = getattr(content, name)
        if given.keys() != expected.keys():
            raise AdapterRejected(f"incompatible config: {name} tensors differ from the model's")
        for key, tensor in given.items():
            if tensor.shape != expected[key].shape:
                raise AdapterRejected(f"incompatible config: {name} tensor {key} has shape {tuple(tensor.shape)}")
    if content.item_vectors is not None and content.item_vectors.shape[1] != model.item_vectors.shape[1]:
        raise AdapterRejected(f"incompatible config: item vectors have {content.item_vectors.shape[1]} dimensions, "
                              f"the model's base has {model.item_vectors.shape[1]}")


def verify(
    update: SignedUpdate,
    key: bytes | str,
    expected_base_fingerprint: str,
    *,
    model: RankingModel | None = None,
) -> Unpacked:
    """Check integrity, signature, base and (given ``model``) shape compatibility of an update.

    Returns the parsed payload; raises :class:`AdapterRejected` with the first reason it fails.
    """
    if not hmac.compare_digest(sha256(update.payload), str(update.sha256)):
        raise AdapterRejected("sha256 mismatch: payload corrupted or altered")
    if not hmac.compare_digest(sign(update.payload, key), str(update.signature)):
        raise AdapterRejected("bad signature: not signed with this deployment's key")
    content = parse(update.payload)
    fingerprints = {content.manifest.base_fingerprint, update.base_fingerprint}
    if fingerprints != {expected_base_fingerprint}:
        raise AdapterRejected(
            f"wrong base: adapter was trained on base {content.manifest.base_fingerprint[:12]}…, "
            f"this model's base is {expected_base_fingerprint[:12]}…"
        )
    if content.manifest.version != update.version:
        raise AdapterRejected(f"version mismatch: record says {update.version!r}, payload {content.manifest.version!r}")
    if model is not None:
        check_compatible(content, model)
    return content


# --------------------------------------------------------------------------- loading


def _read_dir(adapter_dir: Path) -> Unpacked:
    item_texts, item_vectors = _read_item_vectors(adapter_dir)
    return Unpacked(
        manifest=read_manifest(adapter_dir),
        adapter_config=json.loads((adapter_dir / ADAPTER_CONFIG).read_text()),
        model_config=read_model_config(adapter_dir),
        adapter=load_file(adapter_dir / ADAPTER_WEIGHTS),
        head=load_file(adapter_dir / HEAD_WEIGHTS),
        item_texts=item_texts,
        item_vectors=None if item_vectors is None else item_vectors.float(),
    )


@torch.no_grad()
def load_adapter_into(model: RankingModel, adapter: str | Path | Unpacked, *, refresh: bool = True) -> Manifest:
    """Swap an adapter's LoRA and head weights into ``model`` in place; re-encode its catalogue if ``refresh``.

    Checks base fingerprint and compatibility first, so a refused adapter leaves ``model`` untouched.
    Do not call this on a model that is serving requests; see :func:`load_scorer`.
    """
    content = adapter if isinstance(adapter, Unpacked) else _read_dir(Path(adapter))
    if content.manifest.base_fingerprint != model.base_fingerprint:
        raise AdapterRejected("wrong base: adapter was trained on another base encoder")
    check_compatible(content, model)
    device = model.device
    result = set_peft_model_state_dict(model.encoder, {k: v.to(device) for k, v in content.adapter.items()})
    if result.unexpected_keys:
        raise AdapterRejected(f"incompatible config: unexpected adapter tensors {result.unexpected_keys[:3]}")
    model.head.load_state_dict({k: v.to(device) for k, v in content.head.items()}, strict=True)
    model.adapter_version = content.manifest.version
    model.text_changed()
    if refresh and model.n_items:
        model.refresh_item_vectors()
    return content.manifest


def load_scorer(
    base: Base,
    adapter: str | Path | Unpacked | None,
    item_texts: list[str],
    *,
    config: ModelConfig | None = None,
    device: str = "cpu",
) -> RankingModel:
    """A new, ready-to-serve model (adapter loaded, catalogue encoded) that shares nothing mutable
    with any live model: build it off to the side, then swap the reference.

    ``adapter=None`` gives version 0 with ``config``; otherwise the adapter's own config is used.
    """
    if adapter is None:
        model = RankingModel(base, config, device=device)
        model.set_catalogue(item_texts)
        return model
    content = adapter if isinstance(adapter, Unpacked) else _read_dir(Path(adapter))
    model = RankingModel(base, content.model_config, device=device)
    load_adapter_into(model, content, refresh=False)
    if content.item_vectors is None:
        model.set_catalogue(item_texts)
        return model
    model.set_catalogue(item_texts, encode=False)
    vectors, missing = shipped_item_vectors(content, model.item_texts)
    model.item_vectors = vectors.to(model.device)
    model.refresh_item_vectors(missing)
    return model


def shipped_item_vectors(content: Unpacked, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Vectors for ``texts`` taken from the payload, and the rows it had none for (zeros; encode those).

    >>> content = Unpacked(None, {}, ModelConfig(), {}, {}, ("mug",), torch.ones(1, 2))
    >>> vectors, missing = shipped_item_vectors(content, ["cup", "mug"])
    >>> vectors.tolist(), missing
    ([[0.0, 0.0], [1.0, 1.0]], [0])
    """
    if content.item_vectors is None:
        raise ValueError("this adapter ships no item vectors")
    return vectors_for_texts(content.item_texts, content.item_vectors, texts)


def vectors_for_texts(known_texts: Sequence[str], known_vectors: torch.Tensor, texts: Sequence[str]
                      ) -> tuple[torch.Tensor, list[int]]:
    """Rows of ``known_vectors`` (one per ``known_texts``) for ``texts``, and the indices of ``texts`` it has no
    row for (left as zeros): vectors keyed by the text they were encoded from, wherever they came from."""
    row_of = {text: row for row, text in enumerate(known_texts)}
    rows = [row_of.get(text, -1) for text in texts]
    found = [i for i, row in enumerate(rows) if row >= 0]
    vectors = torch.zeros(len(texts), known_vectors.shape[1])
    if found:
        vectors[torch.tensor(found)] = known_vectors[torch.tensor([rows[i] for i in found])]
    return vectors, [i for i, row in enumerate(rows) if row < 0]
