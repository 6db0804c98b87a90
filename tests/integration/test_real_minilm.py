"""The real all-MiniLM-L6-v2 on CPU: one train step, then save, sign, verify, unpack and serve the adapter."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from learner import artifacts
from learner.encoder import base_state, load_base
from learner.model import Example, RankingModel
from learner.rich_features import FEATURE_NAMES
from learner.trainer import MicroBatchTrainer, TrainerConfig

pytestmark = [pytest.mark.model, pytest.mark.slow]

log = logging.getLogger(__name__)
DATA = Path(__file__).resolve().parents[2] / "data" / "online_retail.parquet"
KEY = b"integration-key"


def product_texts(n: int) -> list[str]:
    """The first ``n`` distinct product descriptions of the bundled UCI Online Retail data."""
    descriptions = pq.read_table(DATA, columns=["Description"])["Description"].drop_null()
    return [str(d).strip() for d in pc.unique(descriptions).to_pylist()[:n]]


def test_real_minilm_trains_one_step_and_round_trips(tmp_path):
    started = time.perf_counter()
    base = load_base()
    log.info("MiniLM loaded in %.1fs", time.perf_counter() - started)
    assert base.dim == 384 and base.pooling == "mean"
    before = {name: t.clone() for name, t in base.model.state_dict().items()}

    texts = product_texts(300)
    model = RankingModel(base)
    started = time.perf_counter()
    model.set_catalogue(texts)
    log.info("encoded %d items in %.2fs", len(texts), time.perf_counter() - started)
    # encoder similarity means something: two lantern products are closer than a lantern and a mug
    lanterns = [i for i, t in enumerate(texts) if "LANTERN" in t][:2]
    mug = next(i for i, t in enumerate(texts) if "MUG" in t)
    if len(lanterns) == 2:
        vectors = model.item_vectors
        assert float(vectors[lanterns[0]] @ vectors[lanterns[1]]) > float(vectors[lanterns[0]] @ vectors[mug])

    rng = np.random.default_rng(0)
    batch = [Example(history=tuple(rng.choice(len(texts), 5)), positive=int(rng.integers(len(texts))),
                     negatives=tuple(rng.choice(len(texts), 9)), features=rng.random((10, len(FEATURE_NAMES))))
             for _ in range(64)]
    trainer = MicroBatchTrainer(model, TrainerConfig(lora_lr=1e-3))
    result = trainer.train_step(batch)
    log.info("train step, batch 64 (%d items encoded with gradients): %.2fs", result.n_encoded, result.seconds)
    assert np.isfinite(result.loss)

    after = base_state(model.encoder)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert model.current_base_fingerprint() == base.fingerprint

    model.refresh_item_vectors()
    saved = artifacts.save_adapter(model, tmp_path, "v1", parent="v0", metrics={"loss": result.loss})
    update = artifacts.make_update(saved, KEY)
    log.info("adapter payload: %d bytes", len(update.payload))
    content = artifacts.verify(update, KEY, base.fingerprint, model=model)
    restored = artifacts.unpack(update.payload, tmp_path / "serving" / content.manifest.version)
    scorer = artifacts.load_scorer(base, restored, texts)

    features = rng.random((len(texts), len(FEATURE_NAMES)))
    candidates = list(range(len(texts)))
    assert torch.allclose(scorer.score([1, 2, 3], candidates, features), model.score([1, 2, 3], candidates, features),
                          atol=1e-5)
    started = time.perf_counter()
    scorer.score([1, 2, 3], candidates, features)
    log.info("one request over %d candidates: %.2fms", len(texts), 1000 * (time.perf_counter() - started))
