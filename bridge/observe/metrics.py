"""Prometheus metrics, kept in one registry served on /metrics. Labels never carry values.

prometheus_client (with the HTTP and WSGI modules it imports) is loaded on the first metric
recorded or the first look at the registry, not at import: `sync` and `check` run with recording
off (`unrecorded()`; nothing can scrape a process that exits), so only `run` pays for it.
Every metric is registered when the registry is made, so /metrics lists each from the start.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_lock = threading.Lock()
_registry: CollectorRegistry | None = None
_recording = True


class _Discarded:
    """What a metric hands out while recording is off: takes every update, keeps nothing."""

    def labels(self, **values: str) -> _Discarded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def remove(self, *values: str) -> None:
        pass

    def clear(self) -> None:
        pass


_DISCARDED = _Discarded()


class _Metric:
    """One metric, made in the registry on first use (of any metric). `kind` names the
    prometheus_client class: Counter, Gauge or Histogram."""

    def __init__(self, kind: str, name: str, documentation: str, labels: Iterable[str] = (),
                 **options: Any) -> None:
        self.kind, self.name, self.documentation = kind, name, documentation
        self.label_names = tuple(labels)
        self.options = options
        self.made: Any = None
        _ALL.append(self)

    def _target(self) -> Any:
        if not _recording:
            return _DISCARDED
        if self.made is None:
            registry()
        return self.made

    def labels(self, **values: str) -> Any:
        return self._target().labels(**values)

    def inc(self, amount: float = 1) -> None:
        self._target().inc(amount)

    def set(self, value: float) -> None:
        self._target().set(value)

    def observe(self, value: float) -> None:
        self._target().observe(value)

    def remove(self, *values: str) -> None:
        self._target().remove(*values)

    def clear(self) -> None:
        self._target().clear()

    def __getattr__(self, name: str) -> Any:
        """Anything else (`collect`, `describe`) is the real metric's, made for it."""
        if name.startswith("__") or "made" not in self.__dict__:
            raise AttributeError(name)
        if self.made is None:
            registry()
        return getattr(self.made, name)


_ALL: list[_Metric] = []


class _LastRefresh:
    """Each entry's last successful refresh, read from the running engine at scrape time (so an
    idle cycle over 10,000 secrets sets no gauges). The engine sets `entries`."""

    def __init__(self) -> None:
        self.entries: Callable[[], Iterable[tuple[str, float]]] = lambda: ()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "secrets_bridge_secret_last_refresh_timestamp_seconds",
            "Unix time each secret was last confirmed current with its source (fetched or checked unchanged).",
            labels=["secret"],
        )
        for name, stamp in self.entries():
            family.add_metric([name], stamp)
        yield family


def registry() -> CollectorRegistry:
    """The registry /metrics serves, with every metric in it (made on the first call)."""
    global _registry
    with _lock:
        if _registry is None:
            import prometheus_client

            # *_created series double the output and tell an operator nothing
            prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
            made = prometheus_client.CollectorRegistry(auto_describe=True)
            for metric in _ALL:
                cls = getattr(prometheus_client, metric.kind)
                metric.made = cls(metric.name, metric.documentation, metric.label_names, registry=made,
                                  **metric.options)
            made.register(LAST_REFRESH)  # type: ignore[arg-type]  # a Collector by shape
            _registry = made
        return _registry


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Within: every metric update is dropped, and prometheus_client is not imported for it."""
    global _recording
    before, _recording = _recording, False
    try:
        yield
    finally:
        _recording = before


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":  # the name callers used before the registry was made on demand
        return registry()
    raise AttributeError(name)


PROVIDER_REQUESTS = _Metric(
    "Counter", "secrets_bridge_provider_requests_total",
    "Backend API calls, by provider instance, operation and outcome.",
    ["provider", "operation", "outcome"],
)
COMMITS = _Metric(
    "Counter", "secrets_bridge_commits_total",
    "Generations committed to the output directory.",
)
SECRET_ERRORS = _Metric(
    "Gauge", "secrets_bridge_secret_failing",
    "1 while a secret cannot be refreshed, by secret name and error code.",
    ["secret", "code"],
)
CYCLE_SECONDS = _Metric(
    "Histogram", "secrets_bridge_cycle_duration_seconds",
    "Time of one sync cycle: plan, fetch, render, commit and announce.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMMIT_SECONDS = _Metric(
    "Histogram", "secrets_bridge_commit_duration_seconds",
    "Time of one commit to the output directory (writing changed files and swapping ..data).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LAST_REFRESH = _LastRefresh()
NOTIFICATIONS = _Metric(
    "Counter", "secrets_bridge_notifications_total",
    "on_change actions run, by kind (signal, exec, http) and outcome (ok, failed, skipped).",
    ["action", "outcome"],
)
DRIFT_REPAIRS = _Metric(
    "Counter", "secrets_bridge_drift_repairs_total",
    "Managed links, files or ..data changed by something else and put back.",
)
LEASE_EXPIRY = _Metric(
    "Gauge", "secrets_bridge_lease_expiry_timestamp_seconds",
    "Unix time a leased value or certificate expires, by secret entry.",
    ["secret"],
)
LEASE_RENEWALS = _Metric(
    "Counter", "secrets_bridge_lease_renewals_total",
    "Lease renewals, by outcome (ok, short, failed).",
    ["outcome"],
)
LEASE_ISSUES = _Metric(
    "Counter", "secrets_bridge_lease_issues_total",
    "New issues of leased values and certificates (first, reissue, resume_lost), by outcome.",
    ["reason", "outcome"],
)
EXEC_RESTARTS = _Metric(
    "Counter", "secrets_bridge_exec_restarts_total",
    "Restarts of exec's child for changed values, by what changed (env, file).",
    ["reason"],
)
