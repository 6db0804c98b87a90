"""``recloop eval``: the baselines, the frozen base, recloop and its variants in one prequential run.

Every model sees the same stream in the same order (:func:`ops.evaluate.prequential`): score a
timestamp group, then learn it. ``recloop`` is what a shopper is served: the deployed learner trains,
each published adapter is verified and built by serving's code, and serving's ranking scores
(:class:`ops.served_recommender.ServedRecommender`). Its variants run the same code with one thing
changed: ``recloop_no_text`` (the text term removed), ``recloop_frozen_text`` (the text tower never
trained) and, with ``full_finetune=True``, ``full_finetune`` (every encoder weight trained, no LoRA).
The *slate views* (:data:`SLATE_VIEWS`) rank recloop's own versions with another new-item stage
(:mod:`serving.new_items`): they cost only scoring, so they always run.

Besides the ranking metrics, the run measures **retention**: each version the learners accept ranks
a fixed early slice held out of training (:class:`learner.ranker.RetentionProbe`, the data's first
month); retention is the last version's NDCG@10 on it over the best version's, for the model as served
(``retention``) and for its text cosine alone (``retention_text``, which isolates what the encoder forgot).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from learner.baselines import Recommender
from learner.baskets import DEFAULT_DATA_PATH
from learner.encoder import Base, load_base, tiny_bert
from learner.ranker_config import RankerConfig
from learner.text_baseline import FrozenBaseRecommender
from ops.evaluate import ProgressFactory, Protocol, default_models, draw_model_panels, markdown_table, run_eval
from ops.served_recommender import ServedRecommender, SlateView, TextView
from ops.shop_files import Shop, load_shop
from serving.new_items import NO_SLATE, NewItemSlate

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr")


#: recloop and its ablations: what each changes in the one model (see the module docstring)
VARIANTS = {"recloop": {}, "recloop_no_text": {"use_text": False}, "recloop_frozen_text": {"train_text": False}}

#: recloop's versions ranked with another new-item stage than serving's (:data:`serving.new_items.NEW_ITEM_SLATE`)
SLATE_VIEWS = {
    "recloop_model_only": NO_SLATE,
    "recloop_new_1": NewItemSlate(slots=1),
    "recloop_new_n80": NewItemSlate(min_similarity=0.8),
    "recloop_new_by_similarity": NewItemSlate(by="similarity"),
}


def build_models(base: Base, shop: Shop, probe_until: float | None, config: RankerConfig | None = None, *,
                 baselines: bool = True, ablations: bool = True, full_finetune: bool = False) -> list[Recommender]:
    """The baselines, the frozen base, recloop, its ablations and (optionally) the full fine-tune."""
    config = config or RankerConfig()
    texts = shop.item_texts()
    items = shop.items()
    variants = {name: change for name, change in VARIANTS.items() if ablations or name == "recloop"}
    if full_finetune:
        variants["full_finetune"] = {"full_finetune": True}
    learners = [ServedRecommender(base, items, name=name, config=dataclasses.replace(config, **change),
                                  probe_until=probe_until) for name, change in variants.items()]
    frozen = FrozenBaseRecommender(base, texts)
    views = [SlateView(learners[0], name, slate) for name, slate in SLATE_VIEWS.items()]
    views += [TextView(learner, f"{learner.name}_text_only") for learner in learners
              if learner.learner.ranker.config.use_text]
    return [*(default_models() if baselines else []), frozen, *learners, *views]


def run_full_eval(quick: bool, out_dir: Path | None, model_dir: Path | None = None, tiny: bool = False, *,
                  data_path: Path = DEFAULT_DATA_PATH, config: RankerConfig | None = None,
                  threads: int | None = 1, progress: ProgressFactory | None = None, ablations: bool = True,
                  full_finetune: bool = False) -> dict:
    """Run the protocol on every model and return the JSON-able result; write eval.md/.json/.png to ``out_dir``.

    ``tiny`` uses a seeded random tiny BERT instead of MiniLM (fast; its text vectors mean nothing).
    ``threads`` caps torch's CPU threads (1 suits a shared 2-core machine; ``None`` leaves torch's default).
    ``data_path``: contract records or the Online Retail file (:func:`ops.shop_files.load_shop`); ``progress``:
    see :func:`ops.evaluate.run_eval`.
    """
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    base = tiny_bert(seed=0) if tiny else load_base(model_dir)
    shop = load_shop(data_path)
    probe_until = Protocol.for_baskets(shop.baskets).probe_end
    models = build_models(base, shop, probe_until, config, ablations=ablations, full_finetune=full_finetune)
    learners = [m for m in models if isinstance(m, ServedRecommender)]
    setup_seconds = time.perf_counter() - started
    result = run_eval(models, quick=quick, data_path=data_path, out_dir=None, shop=shop, progress=progress)
    reports = {m.name: m.report() for m in learners}
    for learner in learners:
        learner.close()
    result["models"] = {name: {**{k: summary[k] for k in SUMMARY_METRICS}, **summary}
                        for name, summary in result["models"].items()}
    result["retention"] = {"frozen_base": 1.0, **{name: r["retention"] for name, r in reports.items()}}
    result["retention_text"] = {name: r["retention_text"] for name, r in reports.items()}
    result["learners"] = reports
    result["base"] = {"name": base.name, "fingerprint": base.fingerprint[:16], "tiny": tiny}
    result["setup_seconds"] = round(setup_seconds, 1)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


# --------------------------------------------------------------------------- outputs


def markdown_report(result: dict) -> str:
    """The metrics table of :func:`ops.evaluate.markdown_table`, then retention and what the learners did."""
    lines = [markdown_table(result).rstrip(), "",
             f"Base encoder: `{result['base']['name']}` (fingerprint {result['base']['fingerprint']}…).", "",
             "## Retention on the held-out early slice", "",
             "Last accepted version's NDCG@10 on the slice over the best version's (1.0 = nothing forgotten).", "",
             "| model | retention (as served) | retention (text cosine only) | versions | refused | probe baskets |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, value in result["retention"].items():
        report = result["learners"].get(name)
        if report is None:
            lines.append(f"| {name} | {_fmt(value)} | - | - | - | - (never changes) |")
            continue
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(report['retention_text'])} | {report['versions']} "
                     f"| {report['refused']} | {report['probe_baskets']} |")
    lines += ["", "## Where the learners' time went (seconds)", "",
              "| model | " + " | ".join(next(iter(result["learners"].values()))["timings_s"]) + " |",
              "|---|" + "---:|" * len(next(iter(result["learners"].values()))["timings_s"])]
    for name, report in result["learners"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in report["timings_s"].values()) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(markdown_report(result))
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    write_plot(result, out_dir / "eval.png")


def write_plot(result: dict, path: Path) -> None:
    """Three panels: NDCG@10/HR@10 per model, NDCG@10 week by week, and the probe NDCG@10 per accepted version."""
    import matplotlib  # only plotting needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, weeks, probe) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1.5, 1]})
    draw_model_panels(result, bars, weeks)
    for name, report in result["learners"].items():
        versions = [row["version"] for row in report["probe"]]
        line, = probe.plot(versions, [row["ndcg@10"] for row in report["probe"]], label=f"{name} (as served)")
        probe.plot(versions, [row["text_ndcg@10"] for row in report["probe"]], linestyle="--", color=line.get_color(),
                   label=f"{name} (text only)")
    probe.set_xlabel("accepted version")
    probe.set_ylabel("NDCG@10 on the early slice")
    probe.legend(fontsize="small")
    mode = "quick" if result["protocol"].get("quick") else "full"
    figure.suptitle(f"Prequential evaluation on Online Retail ({mode} protocol, base {result['base']['name']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
