"""``recloop bench feedback``: how fast the explanation bandit approaches the oracle, over many simulated shops."""

from __future__ import annotations

import statistics
import time

from learner.feedback_sim import SimConfig, simulate


def run_bench_feedback(*, events: int = 5000, seeds: int = 20) -> dict:
    """Run :func:`learner.feedback_sim.simulate` for ``seeds`` shops; summarise events-to-90 % and the curves."""
    started = time.perf_counter()
    results = [simulate(SimConfig(events=events, seed=seed)) for seed in range(seeds)]
    reached = [r.events_to_90 for r in results if r.events_to_90 is not None]
    first = results[0]
    return {
        "benchmark": "explanation bandit vs oracle style (learner/feedback_sim.py)",
        "config": first.as_dict()["config"] | {"seed": f"0..{seeds - 1}"},
        "events_to_90_median": statistics.median(reached) if reached else None,
        "events_to_90_max": max(reached) if reached else None,
        "never_reached": seeds - len(reached),
        "bandit_rate_mean": round(statistics.fmean(r.bandit_rate for r in results), 4),
        "oracle_rate_mean": round(statistics.fmean(r.oracle_rate for r in results), 4),
        "random_rate_mean": round(statistics.fmean(r.random_rate for r in results), 4),
        "curve_mean": [{"events": n,
                        "bandit_over_oracle": round(statistics.fmean(r.curve[i][1] / r.curve[i][2] for r in results),
                                                    4)}
                       for i, (n, *_) in enumerate(first.curve)],
        "seconds": round(time.perf_counter() - started, 2),
    }
