"""``recloop eval``: the baselines, the frozen base, recloop and a full fine-tune in one prequential run.

Every model sees the same stream in the same order (:func:`ops.evaluate.prequential`): score a
timestamp group, then learn it. Besides the ranking metrics, the run measures **retention**: each
version the learners accept ranks a fixed early slice held out of training (see
:class:`learner.recloop_eval_model.RetentionProbe`); retention is the last version's NDCG@10 on it
over the best version's, for the model as served (``retention``) and for its text cosine alone
(``retention_text``, which isolates what the encoder forgot).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from learner.baselines import Recommender
from learner.baskets import DEFAULT_DATA_PATH, item_descriptions, load_baskets, read_transactions
from learner.encoder import Base, load_base, tiny_bert
from learner.recloop_eval_model import (
    FeatureStore,
    FrozenBaseRecommender,
    FullFineTuneRecommender,
    RecloopConfig,
    RecloopRecommender,
)
from ops.evaluate import default_models, draw_model_panels, markdown_table, run_eval

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr")


def build_models(base: Base, item_texts: list[str], config: RecloopConfig | None = None,
                 baselines: bool = True) -> list[Recommender]:
    """The baselines, then the frozen base, recloop and the full fine-tune.

    The catalogue is encoded once: recloop's untrained LoRA is the identity, so its item vectors are the
    frozen base's, and the other two start from a copy. recloop and the full fine-tune share one
    behavioural feature store (they learn the same stream; their weights are their own).
    """
    store = FeatureStore()
    recloop = RecloopRecommender(base, item_texts, config=config, store=store)
    vectors = recloop.model.item_vectors
    full = FullFineTuneRecommender(base, item_texts, config=config, store=store, item_vectors=vectors)
    frozen = FrozenBaseRecommender(item_vectors=vectors)
    return [*(default_models() if baselines else []), frozen, recloop, full]


def run_full_eval(quick: bool, out_dir: Path | None, model_dir: Path | None = None, tiny: bool = False, *,
                  data_path: Path = DEFAULT_DATA_PATH, config: RecloopConfig | None = None,
                  threads: int | None = 1) -> dict:
    """Run the protocol on every model and return the JSON-able result; write eval.md/.json/.png to ``out_dir``.

    ``tiny`` uses a seeded random tiny BERT instead of MiniLM (fast; its text vectors mean nothing).
    ``threads`` caps torch's CPU threads (1 suits a shared 2-core machine; ``None`` leaves torch's default).
    """
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    base = tiny_bert(seed=0) if tiny else load_base(model_dir)
    baskets, index = load_baskets(data_path)
    texts = item_descriptions(read_transactions(data_path), index)
    models = build_models(base, texts, config)
    learners = [m for m in models if isinstance(m, RecloopRecommender)]
    setup_seconds = time.perf_counter() - started
    result = run_eval(models, quick=quick, data_path=data_path, out_dir=None)
    reports = {m.name: m.report() for m in learners}
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
