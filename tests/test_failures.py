"""How failures are told (bridge/engine/failures.py): logged once, the last good file kept, the
failing gauge following a failure and its recovery."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.errors import SecretNotFound, Unavailable
from tests.engines import fake_engine


def test_failure_keeps_last_good_file_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failing provider leaves the files; the failure is logged when it starts and when it ends."""
    caplog.set_level(logging.INFO, logger="secrets_bridge")
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    fake.failure = Unavailable("server error")
    for _ in range(5):
        result = engine.cycle(engine.units.values())
        assert "a" in result.failed
    assert (tmp_path / "a").read_bytes() == b"one"
    assert len([r for r in caplog.records if "server error" in r.getMessage()]) == 1
    fake.failure = None
    engine.cycle(engine.units.values())
    assert len([r for r in caplog.records if "recovered after 5 attempts" in r.getMessage()]) == 1


def test_deleted_upstream_keeps_file(tmp_path: Path) -> None:
    """A secret deleted upstream keeps its last good file and is reported."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    del fake.history["r1"]
    result = engine.cycle(engine.units.values())
    assert isinstance(result.failed["a"], SecretNotFound)
    assert (tmp_path / "a").read_bytes() == b"one"


def test_failing_gauge_follows_failure_and_recovery(tmp_path: Path) -> None:
    """secrets_bridge_secret_failing is 1 while a secret fails and gone once it recovers."""
    from bridge.observe.metrics import SECRET_ERRORS

    def failing() -> list[tuple[str, str]]:
        return [(s.labels["secret"], s.labels["code"]) for m in SECRET_ERRORS.collect() for s in m.samples
                if s.labels["secret"] == "gauge_a"]

    engine, fake = fake_engine(tmp_path, "  gauge_a: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    fake.failure = Unavailable("down")
    engine.cycle(engine.units.values())
    assert failing() == [("gauge_a", "unavailable")]
    fake.failure = SecretNotFound("gone")
    engine.cycle(engine.units.values())
    assert failing() == [("gauge_a", "not_found")]
    fake.failure = None
    engine.cycle(engine.units.values())
    assert failing() == []
