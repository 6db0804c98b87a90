"""The serving worker's Prometheus metrics and the counts ``/healthz`` reports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from serving.state import Swap
from streams.records import ExplanationPolicy


class ServingMetrics:
    """The worker's Prometheus metrics, in a registry of its own (several workers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "recloop_serving_request_seconds", "Time to answer a request, inside the worker", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.requests = Counter("recloop_serving_requests", "Requests answered", ["route", "status"], registry=r)
        self.swaps = Counter("recloop_serving_swaps", "Serving states swapped in", ["cause"], registry=r)
        self.swap_apply_seconds = Histogram(
            "recloop_serving_swap_apply_seconds", "Time the swap itself took (a reference assignment)", registry=r,
            buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05))
        self.build_seconds = Histogram(
            "recloop_serving_state_build_seconds", "Time to build a new state off to the side", ["cause"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.rejected_updates = Counter("recloop_serving_rejected_updates", "Adapter updates refused", ["kind"],
                                        registry=r)
        self.model = Info("recloop_serving_model", "The model version being served", registry=r)
        self.items = Gauge("recloop_serving_catalogue_items", "Items the serving state scores", registry=r)
        self.impressions = Counter("recloop_serving_impressions", "Impressions logged", ["outcome"], registry=r)
        self.feedback = Counter("recloop_serving_feedback", "Feedback accepted or refused", ["kind", "outcome"],
                                registry=r)
        self.ready = Gauge("recloop_serving_ready", "1 once a model version is serving", registry=r)
        self.policy_swaps = Counter("recloop_serving_policy_swaps", "Explanation policies swapped in", registry=r)
        self.rejected_policies = Counter("recloop_serving_rejected_policies", "Explanation policies refused",
                                         ["kind"], registry=r)
        self.policy_version = Gauge("recloop_serving_policy_version", "The explanation policy version serving",
                                    registry=r)
        self.policy_swap_count = 0
        self.rejected_policy_count = 0
        self.swap_count = 0
        self.rejected_count = 0
        self.max_swap_apply_ms = 0.0
        self.last_swap_apply_ms = 0.0

    def swapped(self, swap: Swap, cause: str) -> None:
        self.swaps.labels(cause).inc()
        self.swap_apply_seconds.observe(swap.apply_ms / 1000)
        self.build_seconds.labels(cause).observe(swap.current.built_ms / 1000)
        self.model.info({"version": swap.current.version})
        self.items.set(swap.current.n_items)
        self.ready.set(1)
        self.swap_count += 1
        self.last_swap_apply_ms = swap.apply_ms
        self.max_swap_apply_ms = max(self.max_swap_apply_ms, swap.apply_ms)

    def rejected(self, kind: str, reason: str) -> None:
        self.rejected_updates.labels(kind).inc()
        self.rejected_count += 1

    def policy_swapped(self, policy: ExplanationPolicy) -> None:
        self.policy_swaps.inc()
        self.policy_version.set(policy.version)
        self.policy_swap_count += 1

    def policy_rejected(self, kind: str, reason: str) -> None:
        self.rejected_policies.labels(kind).inc()
        self.rejected_policy_count += 1
