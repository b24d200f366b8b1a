"""Metrics made on demand (bridge/metrics.py): the registry lists every metric, updates count,
and updates inside `unrecorded()` (sync and check) are dropped."""

from __future__ import annotations

from prometheus_client import generate_latest

from bridge.observe import metrics


def _commits() -> float:
    return metrics.registry().get_sample_value("secrets_bridge_commits_total") or 0.0


def test_registry_lists_every_metric() -> None:
    """/metrics lists every metric, each with its help text, before any was updated."""
    text = generate_latest(metrics.registry()).decode()
    for metric in metrics._ALL:
        assert f"# HELP {metric.name} " in text
    assert "secrets_bridge_secret_last_refresh_timestamp_seconds" in text
    assert metrics.REGISTRY is metrics.registry()


def test_updates_count_outside_unrecorded_only() -> None:
    """An update counts; within unrecorded() it is dropped, labels and all; afterwards it counts again."""
    before = _commits()
    metrics.COMMITS.inc()
    assert _commits() == before + 1
    with metrics.unrecorded():
        metrics.COMMITS.inc()
        metrics.NOTIFICATIONS.labels(action="exec", outcome="ok").inc()
        metrics.CYCLE_SECONDS.observe(0.5)
    assert _commits() == before + 1
    metrics.COMMITS.inc()
    assert _commits() == before + 2
