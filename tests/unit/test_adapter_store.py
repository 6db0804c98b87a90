"""The learner's local adapter store: version numbers keep increasing across lineages (base models)."""

from __future__ import annotations

import os

from learner import artifacts
from learner.adapter_store import UNPUBLISHED_PREFIX, mark_published, next_version, stored_adapters
from learner.encoder import tiny_bert
from learner.model import RankingModel


def test_a_new_base_numbers_its_versions_after_every_lineage_in_the_home(base, tmp_path):
    """A MiniLM run stored v1..v3 (one moved aside unpublished); a run on another base continues at v4."""
    earlier = RankingModel(tiny_bert(seed=1))
    for n in (1, 2, 3):
        artifacts.save_adapter(earlier, tmp_path, f"v{n:06d}", parent=None)
        mark_published(tmp_path, f"v{n:06d}")
    directory = artifacts.adapters_dir(tmp_path)
    os.rename(directory / "v000003", directory / f"{UNPUBLISHED_PREFIX}v000003")

    version = next_version(tmp_path)
    artifacts.save_adapter(RankingModel(base), tmp_path, version, parent=None)

    assert version == "v000004"
    assert {a.manifest.version: a.manifest.base_fingerprint == base.fingerprint
            for a in stored_adapters(tmp_path)} == {"v000001": False, "v000002": False, "v000004": True}
    assert next_version(tmp_path) == "v000005"
