"""Which demo run a ``recloop demo`` is, and what it says about it (no broker: runs are directories)."""

from __future__ import annotations

from rich.console import Console

from ops.demo import choose_run
from streams.settings import KafkaSettings


def said(console: Console) -> str:
    return console.export_text(clear=False).replace("\n", " ")


def test_a_run_says_whether_it_starts_fresh_or_continues(tmp_path):
    settings = KafkaSettings(topic_prefix="shop", home=tmp_path)
    console = Console(record=True, width=400)

    first = choose_run(settings, resume=True, console=console)  # nothing to continue yet
    assert said(console).startswith(f"no earlier demo run to continue: starting fresh: demo run {first.run_id}, "
                                    f"topics shop-demo-{first.run_id}.*")
    first = first.save(replayed_through_ts=1291319940.0)  # what the run records as it ends

    again = choose_run(settings, resume=True, console=console)
    assert again == first
    assert f"continuing demo run {first.run_id}: its topics (shop-demo-{first.run_id}.*)" in said(console)
    assert "replaying the interactions from 2010-12-02T19:59:00+00:00 on" in said(console)

    fresh = choose_run(settings, resume=False, console=console)
    assert fresh.run_id != first.run_id and fresh.topic_prefix != first.topic_prefix
    assert fresh.settings(settings).home == fresh.directory and fresh.directory.parent == first.directory.parent
