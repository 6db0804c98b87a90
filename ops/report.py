"""``recloop report --out DIR``: plots (PNG) of the online metrics over time, and a ``summary.md``.

The first plot and the first section are the headline: served quality per model version (what
serving showed, scored against the shopper's next basket: NDCG@10 beside the repeat baseline's on
the same impressions, and their difference ``lift_over_repeat``). The model-free feature scorer's
ranking figures (``baseline.*``) follow, labelled as the reference they are.

Everything comes from the topics (``recloop.ops.metrics``, ``recloop.ops.drift``,
``recloop.model-updates``), so a report can be made at any time, from any machine that reaches the
broker, without touching the worker. Every plot marks adapter publications (dashed vertical lines,
labelled with the version) and drift alarms (triangles at the top, coloured by severity), so a
change in a metric can be read against what changed in the model and in the data.

Time on the x axis is processing time (UTC): when the worker measured, which is also when adapters
were created.

Stopped workers' series (no snapshot within ``RECLOOP_DASHBOARD_STALE_AFTER_S`` of the newest) are left
out unless ``RECLOOP_DASHBOARD_ALL_WORKERS=1``; ``summary.md`` says which were
(:class:`ops.monitor.DashboardSettings`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from learner.adapter_store import version_sequence  # noqa: E402
from ops.monitor import (  # noqa: E402
    SERVED_COLUMNS,
    DashboardSettings,
    MetricKey,
    OpsFeed,
    OpsState,
    _figure,
    hidden_workers_note,
    visible_workers,
)
from streams.settings import KafkaSettings  # noqa: E402

log = logging.getLogger(__name__)

SEVERITY_COLOUR = {"info": "tab:blue", "warning": "tab:orange", "critical": "tab:red"}
#: Versions named on the plots (the rest are ticks); newest versions drawn on the served panels besides "all".
VERSION_LABELS = 6
SERVED_VERSION_LINES = 3

#: One figure per group; each panel holds the metrics listed (every label set is its own line).
FIGURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "baseline_ranking": (("baseline.hr_at_10", "baseline.ndcg_at_10", "baseline.mrr"),),
    "classification": (("roc_auc",), ("log_loss",), ("accuracy", "precision", "recall", "f1")),
    "impressions": (("ctr",),),
    "explanations": (("explanation_helpful_rate",), ("explanation_style_rate",)),
    "learner": (("learner.train_loss",),),
}
TITLES = {"baseline.hr_at_10": "HR@10", "baseline.ndcg_at_10": "NDCG@10",
          "baseline.mrr": "MRR — baseline: the model-free feature scorer ranking each purchase, not what is served",
          "roc_auc": "ROC AUC (rolling)",
          "log_loss": "log loss (rolling)", "accuracy": "accuracy", "precision": "precision", "recall": "recall",
          "f1": "F1 (at the calibrated 0.5 threshold)", "ctr": "impression CTR",
          "explanation_helpful_rate": "explanation helpful rate by style",
          "explanation_style_rate": "bandit: posterior helpful rate (segment, style)",
          "learner.train_loss": "learner: training loss per micro-batch"}


@dataclass
class ReportResult:
    out: Path
    images: list[Path] = field(default_factory=list)
    snapshots: int = 0
    alarms: int = 0
    adapters: int = 0
    #: Stopped workers whose series were left out.
    hidden_workers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"out": str(self.out), "images": [p.name for p in self.images], "summary": "summary.md",
                "snapshots": self.snapshots, "alarms": self.alarms, "adapters": self.adapters,
                "hidden_workers": self.hidden_workers}


def write_report(state: OpsState, out: Path, dashboard: DashboardSettings | None = None) -> ReportResult:
    """Write the PNGs and ``summary.md`` for everything in ``state`` into ``out``.

    ``dashboard``: which workers to show (default from ``RECLOOP_DASHBOARD_*``); ``snapshots`` counts every
    snapshot read, shown or not."""
    out.mkdir(parents=True, exist_ok=True)
    dashboard = dashboard or DashboardSettings()
    snapshots = sum(len(s) for s in state.series.values()) + len(state.gates)
    state, hidden = visible_workers(state, dashboard)
    result = ReportResult(out=out, snapshots=snapshots, alarms=len(state.alarms), adapters=len(state.adapters),
                          hidden_workers=hidden)
    hide_worker = len(state.workers) <= 1
    if state.served():
        result.images.append(_plot_served(state, out / "served.png", hide_worker))
    for figure, panels in FIGURES.items():
        present = [names for names in panels if any(name in names for name, _ in state.series)]
        if present:
            result.images.append(_plot(state, figure, present, out / f"{figure}.png", hide_worker))
    if any(name == "calibration_observed" for name, _ in state.series):
        result.images.append(_plot_reliability(state, out / "reliability.png", hide_worker))
    if state.alarms or state.gates:
        result.images.append(_plot_alarms(state, out / "drift.png"))
    notes = [hidden_workers_note(hidden, dashboard) + "."] if hidden else []
    (out / "summary.md").write_text(summary_markdown(state, result, hide_worker, notes))
    log.info("report written to %s: %d images", out, len(result.images))
    return result


def run_report(kafka: KafkaSettings, out: Path, *, timeout_s: float = 60.0,
               dashboard: DashboardSettings | None = None) -> ReportResult:
    """Read the ops topics to their current end and write the report (``dashboard``: which workers)."""
    state = OpsState(history=1_000_000)
    feed = OpsFeed(kafka)
    try:
        feed.read_to_end(state, timeout_s=timeout_s)
    finally:
        feed.close()
    return write_report(state, out, dashboard)


# --------------------------------------------------------------------------- plots


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _label(name: str, labels: tuple[tuple[str, str], ...], hide_worker: bool, with_name: bool) -> str:
    tags = ", ".join(f"{k}={v}" for k, v in labels if not (hide_worker and k == "worker"))
    if not tags:
        return name
    return f"{name} {tags}" if with_name else tags


def _labelled_versions(n: int, most: int = VERSION_LABELS) -> set[int]:
    """Which of ``n`` versions (in publication order) get a name on the plots: the first, the last, evenly between.

    >>> sorted(_labelled_versions(139, most=5)), sorted(_labelled_versions(3))
    ([0, 34, 69, 104, 138], [0, 1, 2])
    """
    if n <= most:
        return set(range(n))
    return {round(i * (n - 1) / (most - 1)) for i in range(most)}


def _mark_events(ax, state: OpsState) -> None:
    """Adapter versions as a rug of short ticks along the top (a few named), drift alarms as ▼ — off the data."""
    adapters = state.adapter_list()
    named = _labelled_versions(len(adapters))
    top = ax.get_xaxis_transform()
    for i, info in enumerate(adapters):
        ax.plot([_dt(info.created_at)] * 2, [0.93, 1.0], transform=top, color="grey", linewidth=0.8)
        if i in named:
            ax.annotate(info.version, (_dt(info.created_at), 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                        va="bottom", ha="center", color="grey")
    for severity, colour in SEVERITY_COLOUR.items():
        times = [_dt(a.ts) for a in state.alarms if a.severity == severity]
        if times:
            ax.scatter(times, [0.97] * len(times), transform=ax.get_xaxis_transform(), marker="v", s=30,
                       color=colour, label=f"drift: {severity}", zorder=3)


def _plot(state: OpsState, figure: str, panels: Sequence[tuple[str, ...]], path: Path, hide_worker: bool) -> Path:
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, names in zip(axes[:, 0], panels, strict=True):
        keys: list[MetricKey] = sorted(k for k in state.series if k[0] in names)
        for key in keys:
            series = state.series[key]
            ax.plot([_dt(s.ts) for s in series], [s.value for s in series], marker=".", markersize=3,
                    linewidth=1.2, label=_label(*key, hide_worker, with_name=len(names) > 1))
        _mark_events(ax, state)
        ax.set_title(" · ".join(TITLES.get(n, n) for n in names), fontsize=10, loc="left", pad=12)
        ax.grid(alpha=0.3)
        _legend_outside(ax)
    return _save_timeline(fig, axes, path)


def _legend_outside(ax) -> None:
    """The legend to the right of the panel, never over the curves."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save_timeline(fig, axes, path: Path) -> Path:
    """Time axis under the last panel, then the PNG (the figure is closed)."""
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    axes[-1, 0].set_xlabel("processing time (UTC); ticks along the top: adapter published; ▼: drift alarm")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_served(state: OpsState, path: Path, hide_worker: bool) -> Path:
    """The headline: served NDCG@10 of every version together (black) and of the newest few, each against the
    repeat baseline's on the same impressions (dashed, same colour); their difference; the share of impressions
    followed by a basket. Every version's figures are in ``summary.md``."""
    panels = (("served.ndcg_at_10", "served NDCG@10 (solid) vs the repeat baseline on the same impressions (dashed)"),
              ("served.lift_over_repeat", "lift over repeat: served − repeat NDCG@10"),
              ("served.followed_share", "share of impressions followed by a basket within the window"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = _newest_versions(state.served())
    for ax, (name, title) in zip(axes[:, 0], panels, strict=True):
        lines = [(name, "-", "")]
        if name == "served.ndcg_at_10":
            lines.append(("served.repeat_ndcg_at_10", "--", " repeat"))
        for i, row in enumerate(rows):
            colour = "black" if row.version == "all" else colours[i % len(colours)]
            tags = ", ".join(f"{k}={v}" for k, v in row.labels if not (hide_worker and k == "worker"))
            for metric, style, suffix in lines:
                series = row.series.get(metric)
                if series:
                    ax.plot([_dt(s.ts) for s in series], [s.value for s in series], linestyle=style, marker=".",
                            markersize=3, linewidth=1.2, color=colour, label=tags + suffix)
        if name == "served.lift_over_repeat":
            ax.axhline(0.0, color="grey", linewidth=0.8)
        _mark_events(ax, state)
        ax.set_title(title, fontsize=10, loc="left", pad=12)
        ax.grid(alpha=0.3)
        _legend_outside(ax)
    return _save_timeline(fig, axes, path)


def _newest_versions(rows: list, most: int = SERVED_VERSION_LINES) -> list:
    """The ``all`` row and the ``most`` newest versions' rows (by version number), in that order."""
    every = [row for row in rows if row.version == "all"]
    versions = sorted((row for row in rows if row.version != "all"), reverse=True,
                      key=lambda row: (version_sequence(row.version), row.version))
    return every + versions[:most]


def _plot_reliability(state: OpsState, path: Path, hide_worker: bool) -> Path:
    """Reliability diagram of the calibrated probabilities (the latest window): observed rate against mean predicted
    probability per bin, one line per source; the diagonal is perfect calibration; ECE in the legend."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, dict]] = {}
    for (name, labels), series in state.series.items():
        if name in ("calibration_predicted", "calibration_observed"):
            rest = tuple((k, v) for k, v in labels if k != "bin")
            groups.setdefault(rest, {}).setdefault(dict(labels)["bin"], {})[name] = series[-1]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfectly calibrated")
    for rest, bins in sorted(groups.items()):
        points = sorted((b["calibration_predicted"].value, b["calibration_observed"].value,
                         b["calibration_observed"].window) for b in bins.values() if len(b) == 2)
        if not points:
            continue
        ece = state.series.get(("calibration_ece", rest))
        tags = ", ".join(f"{k}={v}" for k, v in rest if not (hide_worker and k == "worker"))
        label = f"{tags} (ECE {ece[-1].value:.3f})" if ece else tags
        ax.plot([p for p, _, _ in points], [o for _, o, _ in points], marker="o", linewidth=1.2, label=label)
        for predicted, observed, n in points:
            ax.annotate(f"{n:,}", (predicted, observed), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (calibrated score) in the bin")
    ax.set_ylabel("observed rate in the bin")
    ax.set_title("reliability of the calibrated probabilities (latest window; numbers: examples per bin)", fontsize=9,
                 loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_alarms(state: OpsState, path: Path) -> Path:
    """Drift alarms by signal, and the learner's gate decisions on their own row."""
    signals = sorted({a.signal for a in state.alarms}) + (["gate decision"] if state.gates else [])
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(signals)))
    for severity, colour in SEVERITY_COLOUR.items():
        chosen = [a for a in state.alarms if a.severity == severity]
        if chosen:
            ax.scatter([_dt(a.ts) for a in chosen], [signals.index(a.signal) for a in chosen], color=colour,
                       marker="v", s=40, label=severity)
    for published, colour, marker in ((True, "tab:green", "o"), (False, "tab:red", "x")):
        chosen = [g for g in state.gates if (g.value >= 0.5) == published]
        if chosen:
            ax.scatter([_dt(g.ts) for g in chosen], [signals.index("gate decision")] * len(chosen), color=colour,
                       marker=marker, s=40, label="gate: publish" if published else "gate: refuse")
    top = ax.get_xaxis_transform()
    for info in state.adapter_list():
        ax.plot([_dt(info.created_at)] * 2, [0.9, 1.0], transform=top, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(signals)), signals)
    ax.set_ylim(-0.5, len(signals) - 0.5)
    ax.set_title("drift alarms by signal, gate decisions (ticks along the top: adapter published)", fontsize=10,
                 loc="left")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- summary


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "–"


def served_markdown(state: OpsState, hide_worker: bool) -> list[str]:
    """The headline section: the latest served figures per model version, beside the repeat baseline."""
    lines = ["## Served quality", "",
             "What serving showed, joined with each shopper's next basket (within the window) and scored like the "
             "offline next-basket evaluation, beside what the repeat baseline would have shown on the same "
             "impressions; lift = served − repeat NDCG@10. Rolling windows over impressions followed by a basket; "
             "`followed` is the share of closed impressions that were.", ""]
    rows = state.served()
    if not rows:
        return [*lines, "No impression joined with a basket yet.", ""]
    titles = [title for _, title in SERVED_COLUMNS]
    lines += ["| model version | " + " | ".join(titles) + " | impressions followed / closed |",
              "|---|" + "---|" * (len(titles) + 1)]
    for row in rows:
        tags = ", ".join(f"{k}={v}" for k, v in row.labels
                         if k != "model_version" and not (hide_worker and k == "worker"))
        cells = [_figure(row.value(name), signed=name == "served.lift_over_repeat") for name, _ in SERVED_COLUMNS]
        followed, closed = row.value("served.followed"), row.value("served.impressions")
        counts = f"{followed:,.0f} / {closed:,.0f}" if math.isfinite(closed) else "–"
        lines.append(f"| {row.version}{f' ({tags})' if tags else ''} | " + " | ".join(cells) + f" | {counts} |")
    return [*lines, ""]


def summary_markdown(state: OpsState, result: ReportResult, hide_worker: bool, notes: Sequence[str] = ()) -> str:
    """The report's text: ``notes`` (e.g. which workers are left out), period covered, each metric's
    last/min/mean/max, alarms, adapters, images."""
    times = ([s.ts for series in state.series.values() for s in series] + [a.ts for a in state.alarms]
             + [g.ts for g in state.gates])
    lines = ["# recloop report", ""]
    for note in notes:
        lines += [note, ""]
    if times:
        lines.append(f"Period (processing time, UTC): {_dt(min(times)):%Y-%m-%d %H:%M:%S} – "
                     f"{_dt(max(times)):%Y-%m-%d %H:%M:%S}. ")
    lines += [f"{result.snapshots} metric snapshots, {result.alarms} drift alarms, {result.adapters} adapter "
              "versions read from the ops topics.", ""]
    lines += served_markdown(state, hide_worker)

    lines += ["## Metrics", "", "Every series, last value first; `baseline.*` is the model-free feature scorer ranking "
              "each purchase: a reference, not what is served.", "",
              "| metric | labels | last | min | mean | max | window (last) | snapshots |",
              "|---|---|---|---|---|---|---|---|"]
    for (name, labels), series in sorted(state.series.items()):
        values = [s.value for s in series]
        tags = ", ".join(f"{k}={v}" for k, v in labels if not (hide_worker and k == "worker"))
        lines.append(f"| {name} | {tags} | {_fmt(values[-1])} | {_fmt(min(values))} | "
                     f"{_fmt(sum(values) / len(values))} | {_fmt(max(values))} | {series[-1].window:,} | "
                     f"{len(values)} |")
    if not state.series:
        lines.append("| (no snapshots) | | | | | | | |")

    lines += ["", "## Drift alarms", ""]
    if state.alarms:
        by = Counter((a.signal, a.detector, a.severity) for a in state.alarms)
        lines += ["| signal | detector | severity | alarms |", "|---|---|---|---|"]
        lines += [f"| {s} | {d} | {sev} | {n} |" for (s, d, sev), n in sorted(by.items())]
        lines += ["", "Last alarms:", "", "| time (UTC) | signal | detector | severity | value | window |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_dt(a.ts):%Y-%m-%d %H:%M:%S} | {a.signal} | {a.detector} | {a.severity} | {_fmt(a.value)} | "
                  f"{a.window:,} |" for a in list(state.alarms)[-20:]]
    else:
        lines.append("No drift alarm.")

    lines += ["", "## Gate decisions", ""]
    if state.gates:
        published = sum(g.value >= 0.5 for g in state.gates)
        lines += [f"{published} published, {len(state.gates) - published} refused.", "",
                  "| time (UTC) | decision | version | vs serving | metric | candidate | serving | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in list(state.gates)[-20:]:
            t = g.labels
            lines.append(f"| {_dt(g.ts):%Y-%m-%d %H:%M:%S} | {'publish' if g.value >= 0.5 else 'refuse'} | "
                         f"{t.get('version', '–')} | {t.get('serving_version', '–')} | {t.get('metric', '')} | "
                         f"{t.get('candidate', '')} | {t.get('serving', '')} | {t.get('reason', '')} |")
    else:
        lines.append("No gate decision reported.")

    lines += ["", "## Adapter versions", ""]
    adapters = state.adapter_list()
    if adapters:
        keys = sorted({k for a in adapters for k in a.metrics})
        lines += ["| created (UTC) | version | parent | " + " | ".join(keys) + " |",
                  "|---|---|---|" + "---|" * len(keys)]
        lines += [f"| {_dt(a.created_at):%Y-%m-%d %H:%M:%S} | {a.version} | {a.parent or '–'} | "
                  + " | ".join(_fmt(a.metrics[k]) if k in a.metrics else "–" for k in keys) + " |"
                  for a in adapters]
    else:
        lines.append("No adapter published.")

    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in result.images] or ["No data to plot."]
    return "\n".join(lines) + "\n"
