"""Adapter artifacts: standard PEFT files, atomic saves, deterministic signed payloads, strict checks."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from peft import PeftModel

from learner import artifacts
from learner.artifacts import AdapterRejected
from learner.encoder import tiny_bert
from learner.model import Example, ModelConfig, RankingModel
from learner.rich_features import FEATURE_NAMES
from learner.trainer import MicroBatchTrainer, TrainerConfig
from streams.records import AdapterUpdate, decode, encode

N_FEATURES = len(FEATURE_NAMES)

KEY = b"test-signing-key"
TEXTS = [f"{c} {t}" for c in "red blue green pink".split() for t in "heart mug lamp bag card".split()]


@pytest.fixture(scope="module")
def trained(base) -> RankingModel:
    """A model whose LoRA and head have moved away from version 0."""
    model = RankingModel(base)
    model.set_catalogue(TEXTS)
    trainer = MicroBatchTrainer(model, TrainerConfig(lora_lr=1e-2, head_lr=0.05, max_encoded_items=8))
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = [Example(history=tuple(rng.choice(20, 3)), positive=int(rng.integers(20)),
                         negatives=tuple(rng.choice(20, 4)), features=rng.random((5, N_FEATURES))) for _ in range(16)]
        trainer.train_step(batch)
    model.refresh_item_vectors()  # training keeps the cache only roughly current
    return model


@pytest.fixture()
def saved(trained, tmp_path):
    metrics = {"ndcg_at_10": 0.3, "bad": float("nan")}
    return artifacts.save_adapter(trained, tmp_path, "v1", parent="v0", metrics=metrics)


def request_scores(model: RankingModel) -> torch.Tensor:
    features = np.random.default_rng(1).random((20, N_FEATURES))
    return model.score([3, 1, 4, 1, 5], list(range(20)), features)


def test_saved_adapter_is_standard_peft_plus_head_and_manifest(saved, trained, base):
    assert sorted(p.name for p in saved.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "head.safetensors", "manifest.json"]
    assert [p.name for p in saved.parent.iterdir()] == ["v1"]  # no temporary directory left behind
    manifest = artifacts.read_manifest(saved)
    assert (manifest.version, manifest.parent, manifest.base_fingerprint) == ("v1", "v0", base.fingerprint)
    assert manifest.metrics == {"ndcg_at_10": 0.3}
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base.model), saved)
    assert all(torch.equal(peft_model.state_dict()[k], v) for k, v in trained.encoder.state_dict().items())
    with pytest.raises(FileExistsError):
        artifacts.save_adapter(trained, saved.parent.parent, "v1")
    with pytest.raises(ValueError, match="must match"):
        artifacts.save_adapter(trained, saved.parent.parent, "../escape")


def test_save_pack_unpack_load_round_trip_scores_alike(saved, trained, base, tmp_path):
    payload = artifacts.pack(saved)
    restored = artifacts.unpack(payload, tmp_path / "elsewhere" / "v1")
    assert artifacts.pack(restored) == payload  # deterministic and lossless

    fresh = RankingModel(base)
    fresh.set_catalogue(TEXTS)
    assert not torch.allclose(request_scores(fresh), request_scores(trained))
    manifest = artifacts.load_adapter_into(fresh, restored)
    assert manifest.version == fresh.adapter_version == "v1"
    assert torch.allclose(request_scores(fresh), request_scores(trained), atol=1e-6)

    scorer = artifacts.load_scorer(base, restored, TEXTS)
    assert torch.allclose(request_scores(scorer), request_scores(trained), atol=1e-6)
    assert scorer.current_base_fingerprint() == base.fingerprint


def test_unpack_is_idempotent_and_refuses_to_overwrite(saved, trained, tmp_path):
    payload = artifacts.pack(saved)
    dest = artifacts.unpack(payload, tmp_path / "copy")
    assert artifacts.unpack(payload, dest) == dest
    other = artifacts.save_adapter(trained, tmp_path, "v2", parent="v1")
    with pytest.raises(FileExistsError):
        artifacts.unpack(artifacts.pack(other), dest)


def test_update_survives_the_topic_and_verifies(saved, trained, base):
    update = decode(AdapterUpdate, encode(artifacts.make_update(saved, KEY)))
    assert (update.version, update.parent, update.metrics) == ("v1", "v0", {"ndcg_at_10": 0.3})
    content = artifacts.verify(update, KEY, base.fingerprint, model=trained)
    assert content.manifest.version == "v1"


def test_tampered_payload_is_rejected(saved, base):
    update = artifacts.make_update(saved, KEY)
    payload = bytearray(update.payload)
    payload[-1] ^= 0x01
    with pytest.raises(AdapterRejected, match="sha256 mismatch"):
        artifacts.verify(dataclasses.replace(update, payload=bytes(payload)), KEY, base.fingerprint)
    # an attacker who also fixes the checksum still lacks the key
    forged = dataclasses.replace(update, payload=bytes(payload), sha256=artifacts.sha256(bytes(payload)))
    with pytest.raises(AdapterRejected, match="bad signature"):
        artifacts.verify(forged, KEY, base.fingerprint)


def test_wrong_signature_is_rejected(saved, base):
    update = artifacts.make_update(saved, b"another deployment's key")
    with pytest.raises(AdapterRejected, match="bad signature"):
        artifacts.verify(update, KEY, base.fingerprint)
    with pytest.raises(ValueError, match="must not be empty"):
        artifacts.sign(update.payload, b"")


def test_wrong_base_fingerprint_is_rejected(saved, trained):
    update = artifacts.make_update(saved, KEY)
    other_base = tiny_bert(seed=1)
    with pytest.raises(AdapterRejected, match="wrong base"):
        artifacts.verify(update, KEY, other_base.fingerprint)
    with pytest.raises(AdapterRejected, match="wrong base"):  # header lies about the base
        lying = dataclasses.replace(update, base_fingerprint=other_base.fingerprint)
        artifacts.verify(lying, KEY, other_base.fingerprint)
    other = RankingModel(other_base)
    with pytest.raises(AdapterRejected, match="wrong base"):
        artifacts.load_adapter_into(other, saved)


def test_incompatible_config_is_rejected_and_leaves_the_model_untouched(saved, base):
    update = artifacts.make_update(saved, KEY)
    for config in (ModelConfig(feature_names=("repeat", "knn")), ModelConfig(lora_r=4)):
        model = RankingModel(base, config)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(AdapterRejected, match="incompatible config"):
            artifacts.verify(update, KEY, base.fingerprint, model=model)
        with pytest.raises(AdapterRejected, match="incompatible config"):
            artifacts.load_adapter_into(model, saved)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_signed_garbage_and_mismatched_versions_are_rejected(saved, base):
    garbage = b"\x05\x00\x00\x00\x00\x00\x00\x00{nope"
    update = AdapterUpdate(version="v1", parent=None, base_fingerprint=base.fingerprint, created_at=1.3e9,
                           metrics={}, sha256=artifacts.sha256(garbage), signature=artifacts.sign(garbage, KEY),
                           payload=garbage)
    with pytest.raises(AdapterRejected, match="malformed payload"):
        artifacts.verify(update, KEY, base.fingerprint)
    renamed = dataclasses.replace(artifacts.make_update(saved, KEY), version="v9")
    with pytest.raises(AdapterRejected, match="version mismatch"):
        artifacts.verify(renamed, KEY, base.fingerprint)


def test_payload_carries_canonical_configs(saved):
    payload = artifacts.pack(saved)
    contents = json.loads(artifacts._safetensors_metadata(payload))
    assert contents["format"] == artifacts.PAYLOAD_FORMAT
    assert contents["adapter_config"]["target_modules"] == ["query", "value"]
    assert contents["model_config"]["feature_names"] == list(FEATURE_NAMES)
