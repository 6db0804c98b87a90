"""`recloop monitor` and `recloop report` show stopped workers' rows only on request."""

from __future__ import annotations

from rich.console import Console

from ops.monitor import DashboardSettings, OpsState, render
from ops.report import write_report
from streams.records import MetricSnapshot

NOW = 1.7e9


def state_of_three_workers() -> OpsState:
    """``live`` publishes now; ``crashed`` stopped 9 minutes ago, ``old`` 43 minutes ago."""
    state = OpsState()
    for worker, last in (("live", NOW), ("crashed", NOW - 9 * 60), ("old", NOW - 43 * 60)):
        for i in range(3):
            ts = last - 10 * (2 - i)
            state.add_metric(MetricSnapshot("ctr", 0.1 + i / 100, 100, ts, {"worker": worker}))
            for name in ("served.ndcg_at_10", "served.lift_over_repeat", "served.followed_share"):
                state.add_metric(MetricSnapshot(name, 0.3, 50, ts, {"worker": worker, "model_version": f"v-{worker}"}))
    return state


def frame(state: OpsState, dashboard: DashboardSettings) -> str:
    console = Console(width=200, record=True)
    console.print(render(state, counts=None, lag=None, title="t", now=NOW, dashboard=dashboard))
    return console.export_text()


def test_the_monitor_hides_stopped_workers_and_says_how_many():
    text = frame(state_of_three_workers(), DashboardSettings())
    assert "2 stopped workers hidden (no snapshot within 5m of the newest): crashed, old" in text
    assert "v-live" in text and "v-crashed" not in text and "v-old" not in text
    assert "worker=" not in text  # one worker left: its label is not repeated on every row


def test_the_monitor_shows_every_worker_on_request(monkeypatch):
    monkeypatch.setenv("RECLOOP_DASHBOARD_ALL_WORKERS", "1")
    text = frame(state_of_three_workers(), DashboardSettings())
    assert "hidden" not in text and "worker=crashed" in text and "worker=old" in text and "v-old" in text


def test_the_threshold_is_a_setting_and_relative_to_the_newest_snapshot():
    state = state_of_three_workers()
    assert state.stopped_workers(DashboardSettings(stale_after_s=3600).stale_after_s) == []
    text = frame(state, DashboardSettings(stale_after_s=20 * 60))
    assert "1 stopped worker hidden" in text and ": old;" in text and "v-crashed" in text
    # long after the run, the last worker is still shown: the reference is the newest snapshot, not the clock
    assert "v-live" in frame(state, DashboardSettings()) and state.stopped_workers(1.0) == ["crashed", "old"]


def test_the_report_leaves_stopped_workers_out_unless_asked(tmp_path):
    result = write_report(state_of_three_workers(), tmp_path / "a", DashboardSettings())
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert result.hidden_workers == ["crashed", "old"] and result.as_dict()["hidden_workers"] == ["crashed", "old"]
    assert summary.startswith("# recloop report\n\n2 stopped workers hidden")
    assert "| v-live |" in summary and "v-old" not in summary
    assert result.snapshots == 36  # every snapshot read is counted, shown or not

    everything = write_report(state_of_three_workers(), tmp_path / "b", DashboardSettings(all_workers=True))
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert everything.hidden_workers == [] and "hidden" not in summary and "v-old" in summary
