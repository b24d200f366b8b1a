"""Prometheus metrics, kept in one registry served on /metrics. Labels never carry values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output and tell an operator nothing

REGISTRY = CollectorRegistry(auto_describe=True)

PROVIDER_REQUESTS = Counter(
    "secrets_bridge_provider_requests_total",
    "Backend API calls, by provider instance, operation and outcome.",
    ["provider", "operation", "outcome"],
    registry=REGISTRY,
)
COMMITS = Counter(
    "secrets_bridge_commits_total",
    "Generations committed to the output directory.",
    registry=REGISTRY,
)
SECRET_ERRORS = Gauge(
    "secrets_bridge_secret_failing",
    "1 while a secret cannot be refreshed, by secret name and error code.",
    ["secret", "code"],
    registry=REGISTRY,
)
