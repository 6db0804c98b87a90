"""What searches teach the text tower: the join of search impressions with the results shoppers chose, the query
step that trains on them, and the learner service that feeds both (tiny random BERT)."""

from __future__ import annotations

import numpy as np
import torch

from learner.encoder import base_state
from learner.model import ModelConfig, RankingModel
from learner.query_clicks import QueryClicks, QueryExample
from learner.trainer import MicroBatchTrainer, TrainerConfig
from streams.records import Impression, Interaction, Item, RecommendedItem

TEXTS = [f"{c} {t} {i}" for i, (c, t) in enumerate((c, t) for c in "red blue green pink".split()
                                                     for t in "heart mug lamp bag card tin box jar cup bell".split())]


def test_a_search_choice_is_an_example_against_the_results_passed_over():
    clicks = QueryClicks(window_s=60)
    clicks.show("r1", " Bag ", (4, 5, 6), ts=0.0)
    clicks.show("r2", "mug", (1, 2), ts=0.0)
    clicks.show("r3", "lamp", (7,), ts=0.0)  # one result: nothing to choose between
    clicks.show("r4", "   ", (1, 2), ts=0.0)  # no query
    assert clicks.respond("r1", 5, 0.25, ts=5.0) and clicks.respond("r1", 5, 1.0, ts=9.0)  # click, then purchase
    assert not clicks.respond("r1", 9, 1.0, ts=9.0)  # not shown: not this search's label
    assert not clicks.respond("rec-7", 5, 1.0, ts=9.0)  # a /recommend impression's response
    assert not clicks.respond("r1", -1, 1.0, ts=9.0)  # an item the learner does not know
    assert clicks.respond("r2", 1, 1.0, ts=9.0) and clicks.respond("r2", 2, 1.0, ts=9.0)  # chose everything
    assert clicks.expire(now=30.0) == 0  # windows still open
    assert clicks.expire(now=61.0) == 1
    [example] = clicks.sample(10)
    assert example == QueryExample("bag", 5, (4, 6), 1.0)
    assert clicks.searches == 2 and not clicks.respond("r1", 4, 1.0, ts=70.0)  # closed


def test_query_steps_pull_each_query_toward_its_choice_and_leave_base_and_head_alone(base):
    model = RankingModel(base, ModelConfig(feature_names=("a", "b", "c")))
    model.set_catalogue(TEXTS)
    trainer = MicroBatchTrainer(model, TrainerConfig(lora_lr=1e-2, anchor_l2=0.0))
    frozen_base = {name: t.clone() for name, t in base_state(model.encoder).items()}
    head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    chosen = {"red heart": 23, "blue lamp": 5, "green card": 17, "pink bell": 31, "red tin": 8, "blue jar": 2}
    examples = [QueryExample(query, item, (item + 1,)) for query, item in chosen.items()] * 4

    def each_query_finds_its_choice() -> int:
        with torch.no_grad():
            queries = torch.nn.functional.normalize(model.encode_texts(list(chosen)), dim=-1)
            model.refresh_item_vectors()
            cosine = queries @ model.item_vectors[list(chosen.values())].T
        return int((cosine.argmax(1) == torch.arange(len(chosen))).sum())

    before = each_query_finds_its_choice()
    losses = [trainer.query_step(examples, temperature=0.05).loss for _ in range(60)]
    assert losses[-1] < losses[0] / 2
    assert each_query_finds_its_choice() == len(chosen) > before
    assert all(torch.equal(t, frozen_base[name]) for name, t in base_state(model.encoder).items())
    assert all(torch.equal(p, head[n]) for n, p in model.head.named_parameters())
    assert trainer.step == 60 and np.isfinite(losses).all()
    assert np.isfinite(trainer.query_step(examples, shown_negatives=True).loss)  # the passed-over results too


def test_the_learner_learns_search_choices_and_keeps_them_in_its_checkpoint(base, tmp_path):
    from learner.service import LearnerService
    from tests.unit.test_learner_service import KEY, settings

    state = tmp_path / "state"
    service = LearnerService(settings(), tmp_path, key=KEY, base=base, state_dir=state)
    items = [Item(f"I{i}", text) for i, text in enumerate(TEXTS)]
    shown = tuple(RecommendedItem(f"I{i}", 1.0 - i / 10) for i in (3, 13, 23))
    search = Impression("s1", "u1", 1.3e9, "v0", shown, source="search", query="bag")
    recommend = Impression("r1", "u1", 1.3e9, "v0", shown)
    service.process([*items, search, recommend,
                     Interaction("e1", "u1", "I13", "click", 1.3e9 + 5, rec_id="s1"),
                     Interaction("e2", "u1", "I3", "purchase", 1.3e9 + 9, rec_id="r1"),
                     Interaction("e3", "u2", "I1", "purchase", 1.3e9 + 4000)])  # event time past the window
    assert [(e.query, e.positive, e.negatives, e.weight) for e in service.ranker.queries.sample(5)] == [
        ("bag", 13, (3, 23), 0.25)]
    service.checkpoint(through=len(items) + 4)
    restarted = LearnerService(settings(), tmp_path, key=KEY, base=base, state_dir=state)
    assert len(restarted.ranker.queries) == 1 and restarted.ranker.queries.searches == 1
