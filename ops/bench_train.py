"""``recloop bench train``: the learner's training throughput against a plain PEFT LoRA loop, same run.

Both paths train the same model (frozen base + the same LoRA config + the same fusion head and
softmax loss) on the same micro-batches, built from the bundled Online Retail data by the
worker's own :class:`~learner.examples.ExampleBuilder` (real histories, popularity-aware negatives).

* **baseline** — the loop one writes first: for every example, tokenize the texts of its
  history items and of its candidates padded to the fixed ``max_length`` (32), encode them with
  gradients, pool, score, backpropagate (gradients accumulate over the batch), one optimizer step.
* **recloop** — :class:`~learner.trainer.MicroBatchTrainer` as the worker runs it: every distinct
  item of the step is encoded once (history vectors come from the item cache), up to
  ``max_encoded_items`` with gradients, in length buckets padded only to each bucket's longest
  text, with bf16 autocast on CUDA; older examples are replayed on top (not counted as samples).

``samples_per_s`` counts the batch's examples per second of optimizer steps, after warm-up steps.
``seq_len`` reports the real token lengths of the item texts the batches touch.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from learner.encoder import Base, base_fingerprint, pool
from learner.examples import ExampleBuilder, ExampleConfig
from learner.model import Example, FusionHead, ModelConfig, pick_device, recency_weights
from learner.rich_features import RichFeatures
from learner.streaming_model import StreamingRankingModel
from learner.trainer import MicroBatchTrainer, TrainerConfig
from ops.retail_events import read_table, retail_events

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[1] / "data" / "online_retail.parquet"

#: all-MiniLM-L6-v2's architecture, for ``--random-weights`` on machines without the model package.
MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                     layer_norm_eps=1e-12)


@dataclass(frozen=True)
class TrainBenchConfig:
    device: str = "cpu"
    random_weights: bool = False
    batch_size: int = 32
    steps: int = 6
    baseline_steps: int = 2
    warmup: int = 1
    events: int = 8000
    threads: int = 1  # torch intra-op threads (the worker trains on 1); 0 = torch's default
    bucket_size: int = 16
    compile: bool = False
    seed: int = 0


# --------------------------------------------------------------------------- inputs


class HashTokenizer:
    """A stand-in WordPiece-free tokenizer (word → hashed id) for ``--random-weights`` where the model
    package, and so the real vocabulary, is not installed. Token counts are close to WordPiece's."""

    _WORD = re.compile(r"\w+|[^\w\s]")

    def __call__(self, texts: str | Sequence[str], *, padding: bool | str = False, truncation: bool = False,
                 max_length: int = 512, return_tensors: str | None = None) -> dict:
        single = isinstance(texts, str)
        rows = [[101, *(1000 + zlib.crc32(w.lower().encode()) % 29000 for w in self._WORD.findall(t)), 102]
                for t in ([texts] if single else texts)]
        if truncation:
            rows = [r[: max_length - 1] + [102] if len(r) > max_length else r for r in rows]
        if return_tensors is None:
            return {"input_ids": rows[0] if single else rows}
        width = max_length if padding == "max_length" else max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def bench_base(random_weights: bool, seed: int = 0) -> tuple[Base, str]:
    """The pretrained MiniLM, or its architecture with random weights (and the real tokenizer if installed)."""
    if not random_weights:
        from learner.encoder import load_base

        return load_base(), "all-MiniLM-L6-v2"
    from transformers import BertConfig, BertModel

    try:
        from transformers import AutoTokenizer

        from learner.encoder import bundled_minilm_dir

        tokenizer, kind = AutoTokenizer.from_pretrained(bundled_minilm_dir(), local_files_only=True), "wordpiece"
    except (ImportError, OSError):
        tokenizer, kind = HashTokenizer(), "hash-fallback"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(BertConfig(**MINILM_CONFIG), add_pooling_layer=False)
    model.requires_grad_(False).eval()
    return Base(model=model, tokenizer=tokenizer, fingerprint=base_fingerprint(model), name="minilm-random"), \
        f"all-MiniLM-L6-v2 config, random weights ({kind} tokenizer)"


def real_batches(events: int, batch_size: int, n_batches: int, seed: int = 0) -> tuple[list[str], list[list[Example]]]:
    """Item texts and the last ``n_batches`` micro-batches the worker would build from the first ``events``."""
    retail = retail_events(read_table(DATA), limit=events)
    features = RichFeatures()
    builder = ExampleBuilder(features, ExampleConfig(seed=seed))
    titles = {item.item_id: item.text for item in retail.items}
    for item in retail.items:
        features.add_item(item.item_id)
    examples: list[Example] = []
    for start in range(0, len(retail.interactions), 1000):
        examples.extend(builder.observe(retail.interactions[start:start + 1000]))
    wanted = batch_size * n_batches
    if len(examples) < wanted:
        raise ValueError(f"{events} events gave {len(examples)} examples, fewer than {wanted}: raise --events")
    examples = examples[-wanted:]
    texts = [titles.get(code, code) for code in features.index.codes]
    return texts, [examples[i:i + batch_size] for i in range(0, wanted, batch_size)]


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    return np.array([len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts])


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: reset the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(step, batches: list[list[Example]], warmup: int, device: torch.device) -> tuple[float, float, list]:
    """Seconds of the timed steps, peak memory (MB) over them, and the values ``step`` returned."""
    for batch in batches[:warmup]:
        step(batch)
    _sync(device)
    _reset_peak(device)
    started = time.perf_counter()
    values = [step(batch) for batch in batches[warmup:]]
    _sync(device)
    return time.perf_counter() - started, _peak_mb(device), values


def run_recloop(base: Base, texts: list[str], batches: list[list[Example]], cfg: TrainBenchConfig,
                device: torch.device) -> dict:
    model = StreamingRankingModel(base, ModelConfig(), device=str(device), seed=cfg.seed,
                                  bucket_size=cfg.bucket_size)
    model.set_catalogue(texts, encode=False)
    touched = {i for batch in batches for e in batch for i in (*e.history, *e.candidates)}
    model.refresh_item_vectors(touched)  # the worker keeps every item's vector cached
    if cfg.compile:
        model.encoder.base_model.model.forward = torch.compile(model.encoder.base_model.model.forward, dynamic=True)
    trainer = MicroBatchTrainer(model, TrainerConfig(seed=cfg.seed))
    seconds, peak, results = _timed(trainer.train_step, batches[: cfg.warmup + cfg.steps], cfg.warmup, device)
    samples = sum(len(b) for b in batches[cfg.warmup: cfg.warmup + cfg.steps])
    return {"samples_per_s": samples / seconds, "step_ms": 1000 * seconds / cfg.steps, "peak_mem_mb": peak,
            "encoded_texts_per_step": float(np.mean([r.n_encoded for r in results])),
            "loss": float(np.mean([r.loss for r in results]))}


class PlainLoraLoop:
    """The baseline: the same LoRA and head, every (history, candidate) text encoded per example at a fixed width."""

    def __init__(self, base: Base, texts: list[str], config: ModelConfig, device: torch.device, seed: int) -> None:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=sorted(config.target_modules),
                          lora_dropout=0.0, bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = get_peft_model(copy.deepcopy(base.model), lora).to(device)
            self.head = FusionHead(config).to(device)
        self.encoder.eval()
        self.tokenizer, self.pooling, self.texts, self.config, self.device = base.tokenizer, base.pooling, texts, \
            config, device
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([{"params": params, "lr": 5e-4},
                                            {"params": list(self.head.parameters()), "lr": 5e-3}], weight_decay=0.0)
        self.texts_encoded = 0

    def step(self, batch: list[Example]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        total_weight = sum(e.weight for e in batch)
        loss_sum = 0.0
        for example in batch:
            history = list(example.history[-self.config.max_history:])
            texts = [self.texts[i] for i in (*history, *example.candidates)]
            tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.config.max_length,
                                    return_tensors="pt")
            tokens = {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}
            vectors = pool(self.encoder(**tokens).last_hidden_state, tokens["attention_mask"], self.pooling)
            self.texts_encoded += len(texts)
            if history:
                weights = recency_weights(len(history), self.config.history_half_life).to(self.device)
                user = nn.functional.normalize((vectors[: len(history)] * weights[:, None]).sum(0), dim=-1)
            else:
                user = torch.zeros(vectors.shape[1], device=self.device)
            cosine = vectors[len(history):] @ user
            features = torch.as_tensor(example.features, device=self.device)
            scores = self.head(features, cosine)
            loss = -torch.log_softmax(scores, dim=0)[0] * (example.weight / total_weight)
            loss.backward()
            loss_sum += float(loss.detach())
        nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        return loss_sum


def run_baseline(base: Base, texts: list[str], batches: list[list[Example]], cfg: TrainBenchConfig,
                 device: torch.device) -> dict:
    loop = PlainLoraLoop(base, texts, ModelConfig(), device, cfg.seed)
    timed = batches[: cfg.warmup + cfg.baseline_steps]
    seconds, peak, losses = _timed(loop.step, timed, cfg.warmup, device)
    samples = sum(len(b) for b in timed[cfg.warmup:])
    texts_per_step = sum(len(e.history[-50:]) + len(e.candidates) for b in timed[cfg.warmup:] for e in b)
    return {"samples_per_s": samples / seconds, "step_ms": 1000 * seconds / cfg.baseline_steps, "peak_mem_mb": peak,
            "encoded_texts_per_step": texts_per_step / cfg.baseline_steps, "loss": float(np.mean(losses))}


def run_bench_train(cfg: TrainBenchConfig) -> dict:
    device = pick_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base, model_name = bench_base(cfg.random_weights, cfg.seed)
    n_batches = cfg.warmup + max(cfg.steps, cfg.baseline_steps)
    texts, batches = real_batches(cfg.events, cfg.batch_size, n_batches, cfg.seed)
    touched = sorted({i for batch in batches for e in batch for i in (*e.history, *e.candidates)})
    lengths = token_lengths(base.tokenizer, [texts[i] for i in touched], ModelConfig().max_length)

    recloop = run_recloop(base, texts, batches, cfg, device)
    # the same learner without length buckets: what bucketing alone buys
    plain = run_recloop(base, texts, batches, replace(cfg, bucket_size=0), device) if cfg.bucket_size else recloop
    baseline = run_baseline(base, texts, batches, cfg, device)
    return {
        "bench": "train",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "model": model_name,
        "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "baseline_steps": cfg.baseline_steps,
        "samples_per_s": round(recloop["samples_per_s"], 2),
        "baseline_samples_per_s": round(baseline["samples_per_s"], 2),
        "speedup": round(recloop["samples_per_s"] / baseline["samples_per_s"], 2),
        "step_ms": round(recloop["step_ms"], 1),
        "baseline_step_ms": round(baseline["step_ms"], 1),
        "peak_mem_mb": round(recloop["peak_mem_mb"], 1),
        "baseline_peak_mem_mb": round(baseline["peak_mem_mb"], 1),
        "encoded_texts_per_step": recloop["encoded_texts_per_step"],
        "baseline_encoded_texts_per_step": baseline["encoded_texts_per_step"],
        "seq_len": {"mean": round(float(lengths.mean()), 2), "p50": int(np.percentile(lengths, 50)),
                    "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max()),
                    "baseline_padded_to": ModelConfig().max_length},
        "bucket_size": cfg.bucket_size,
        "unbucketed_samples_per_s": round(plain["samples_per_s"], 2),
        "bf16_autocast": device.type == "cuda",
        "compile": cfg.compile,
    }
