"""Prometheus metrics, kept in one registry served on /metrics. Labels never carry values."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
CYCLE_SECONDS = Histogram(
    "secrets_bridge_cycle_duration_seconds",
    "Time of one sync cycle: plan, fetch, render, commit and announce.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "secrets_bridge_commit_duration_seconds",
    "Time of one commit to the output directory (writing changed files and swapping ..data).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)


class _LastRefresh(Collector):
    """Each entry's last successful refresh, read from the running engine at scrape time (so an
    idle cycle over 10,000 secrets sets no gauges)."""

    def __init__(self) -> None:
        self.entries: Callable[[], Iterable[tuple[str, float]]] = lambda: ()

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "secrets_bridge_secret_last_refresh_timestamp_seconds",
            "Unix time each secret was last confirmed current with its source (fetched or checked unchanged).",
            labels=["secret"],
        )
        for name, stamp in self.entries():
            family.add_metric([name], stamp)
        yield family


LAST_REFRESH = _LastRefresh()
REGISTRY.register(LAST_REFRESH)
NOTIFICATIONS = Counter(
    "secrets_bridge_notifications_total",
    "on_change actions run, by kind (signal, exec, http) and outcome (ok, failed, skipped).",
    ["action", "outcome"],
    registry=REGISTRY,
)
DRIFT_REPAIRS = Counter(
    "secrets_bridge_drift_repairs_total",
    "Managed links, files or ..data changed by something else and put back.",
    registry=REGISTRY,
)
LEASE_EXPIRY = Gauge(
    "secrets_bridge_lease_expiry_timestamp_seconds",
    "Unix time a leased value or certificate expires, by secret entry.",
    ["secret"],
    registry=REGISTRY,
)
LEASE_RENEWALS = Counter(
    "secrets_bridge_lease_renewals_total",
    "Lease renewals, by outcome (ok, short, failed).",
    ["outcome"],
    registry=REGISTRY,
)
LEASE_ISSUES = Counter(
    "secrets_bridge_lease_issues_total",
    "New issues of leased values and certificates (first, reissue, resume_lost), by outcome.",
    ["reason", "outcome"],
    registry=REGISTRY,
)
