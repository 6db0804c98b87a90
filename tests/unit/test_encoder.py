"""The frozen base: located offline, loaded deterministically, fingerprinted, pooled."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.encoder import (
    BASE_DIR_ENV,
    base_fingerprint,
    base_model_dir,
    bundled_minilm_dir,
    encode_texts,
    pool,
    tiny_bert,
)
from learner.model import RankingModel


def test_tiny_bert_is_a_function_of_its_seed(base):
    assert tiny_bert(seed=0).fingerprint == base.fingerprint
    assert tiny_bert(seed=1).fingerprint != base.fingerprint
    assert not any(p.requires_grad for p in base.model.parameters())


def test_tiny_bert_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_bert(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_fingerprint_sees_a_single_changed_value(base):
    changed = copy.deepcopy(base.model)
    with torch.no_grad():
        changed.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    assert base_fingerprint(changed) != base.fingerprint


def test_fingerprint_of_a_lora_wrapped_copy_is_the_base_fingerprint(base):
    model = RankingModel(base)
    assert model.current_base_fingerprint() == base.fingerprint
    # the loaded base itself was not wrapped
    assert not any("lora_" in name for name, _ in base.model.named_parameters())


def test_mean_pooling_ignores_padding_and_normalises():
    hidden = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [100.0, -100.0]]])
    vector = pool(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(vector, torch.tensor([[0.7071068, 0.7071068]]))
    assert torch.allclose(pool(hidden, torch.tensor([[1, 1, 1]]), "cls"), torch.tensor([[1.0, 0.0]]))


def test_encoding_does_not_depend_on_batch_padding(base):
    alone = encode_texts(base.model, base.tokenizer, ["red heart"])
    batched = encode_texts(base.model, base.tokenizer, ["red heart", "a much longer text about a lantern holder"])
    assert batched.shape == (2, 32)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(2))


def test_base_dir_prefers_explicit_then_env_then_bundled(tmp_path, monkeypatch):
    monkeypatch.delenv(BASE_DIR_ENV, raising=False)
    assert base_model_dir() == bundled_minilm_dir()
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv(BASE_DIR_ENV, str(tmp_path))
    assert base_model_dir() == tmp_path.resolve()
    with pytest.raises(FileNotFoundError):
        base_model_dir(tmp_path / "missing")
