"""How the online ranker learns: one frozen dataclass, torch-free, so settings can read its defaults.

Every default here is *the* default: :class:`learner.settings.LearnerSettings` reads them from
:data:`DEFAULTS` instead of restating them, and ``recloop eval`` uses the same object.
Tuned on the validation period before the test period of the bundled data (see docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RankerConfig:
    """Settings of :class:`learner.ranker.OnlineRanker`."""

    #: Baskets of known shoppers held out per publish decision; each accepted window is a new version.
    window_baskets: int = 200
    #: Baskets per head step, the head's Adam learning rate, and its pull toward the accepted head.
    head_batch: int = 8
    head_lr: float = 3e-3
    #: Learning rate of the cosine's temperature: Adam moves a log-scale by ~lr per step, so at the head's
    #: rate it could grow e-fold in 100 steps and drown the behavioural columns in text noise.
    text_scale_lr: float = 1e-3
    head_anchor_l2: float = 1e-2
    #: Older baskets replayed into each head step (a reservoir), against forgetting what earlier traffic taught.
    head_replay: int = 2
    head_reservoir: int = 400
    #: Text tower: every n-th window, ``text_steps`` trainer micro-batches of ``text_batch`` examples.
    text_every_windows: int = 5
    text_steps: int = 3
    text_batch: int = 64
    #: Items of a basket new to the shopper turned into text examples, and their negatives: from the top of
    #: the current ranking (hard) and popularity-aware random ones; never the shopper's own past items.
    text_positives: int = 2
    hard_negatives: int = 5
    sampled_negatives: int = 10
    #: How the text tower learns: ``pairs`` (:meth:`MicroBatchTrainer.pair_step`), each item new to a shopper that
    #: they bought beside the item of their history nearest to it, both encoded, against the batch's other pairs
    #: (softmax at ``text_temperature``, corrected for how often an item is discovered); ``fused``, the examples
    #: above through the head's score, where the cosine's small weight (~0.05) passes almost no gradient.
    #: Quick eval, MiniLM, 2026-12-03 (BENCHMARKS.md, "The text tower's objective"): pairs keep the tower closest to
    #: what it knew (``retention_text`` 0.989 vs 0.909), the ranking the same within noise.
    text_objective: Literal["pairs", "fused"] = "pairs"
    text_temperature: float = 0.05
    #: Search choices (:mod:`learner.query_clicks`): with each text-tower training, ``query_steps`` micro-batches
    #: of ``query_batch`` examples sampled from the last ``query_reservoir`` searches' choices; the softmax over
    #: the query's cosines runs at ``query_temperature``. Negatives: the results chosen for the batch's other
    #: queries, and with ``query_shown_negatives`` also the results the shopper passed over — which, all matching
    #: the query's word, pushed the query away from what the word means: text-only query search NDCG@10 fell to
    #: 0.137 with them, rose to 0.201 without (frozen tower 0.172; quick search eval, MiniLM, 2026-12-03).
    query_steps: int = 8
    query_batch: int = 64
    query_reservoir: int = 4096
    query_temperature: float = 0.05
    query_shown_negatives: bool = False
    lora_lr: float = 5e-4
    #: Encoder learning rate of the full fine-tune variant (every encoder weight trains, no LoRA).
    full_finetune_lr: float = 5e-5
    #: Pull of the text tower toward ``text_anchor``: the last accepted version, or the pretrained base (L2-SP).
    #: The base, firmly: anchored to the accepted version (1e-2) the tower drifted step by step and forgot
    #: (``retention_text`` 0.37; its query–title search NDCG@10 fell from the frozen 0.172 to 0.075); anchored to
    #: the base at 1.0 it keeps 0.91 of its best on the early slice and 0.175 on search, the ranking unchanged
    #: (quick eval, MiniLM, 2026-12-02: NDCG@10 0.2844 vs 0.2845, discovery 0.0974 vs 0.0983; BENCHMARKS.md).
    anchor_l2: float = 1.0
    text_anchor: Literal["accepted", "base"] = "base"
    #: Gate: the candidate's NDCG@10 on the window may trail the accepted version's by this much.
    gate_tolerance: float = 0.005
    #: Nothing is held out before the catalogue has this many items.
    min_items: int = 50
    #: Variants ``recloop eval`` compares: the whole encoder trained; the text tower never trained
    #: (``recloop_frozen_text``); the text term removed from the score (``recloop_no_text``).
    full_finetune: bool = False
    train_text: bool = True
    use_text: bool = True
    seed: int = 0


#: The defaults, for settings and docs to read.
DEFAULTS = RankerConfig()
