"""When each fetch unit is next due (bridge/engine/schedule.py), through the engine with a fake
provider: pins never polled, back-off and Retry-After, one schedule per group."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.engine.cycle import Engine
from bridge.errors import Unavailable
from tests.engines import fake_engine


def unit(engine: Engine, entry: str):
    """The single fetch unit of a plain entry."""
    return engine.entries[entry].units[""]


def test_pinned_not_polled(tmp_path: Path) -> None:
    """A pinned secret that was written is never due again."""
    engine, fake = fake_engine(tmp_path, "  b: {provider: fake, ref: r1, version: 1}\n")
    fake.put("r1", b"one")
    engine.sync()
    assert engine.schedule.next_due(unit(engine, "b")) == float("inf")


def test_backoff_grows_and_honours_retry_after(tmp_path: Path) -> None:
    """Retries back off exponentially, capped, and never sooner than retry_after."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n", refresh_interval="60s")
    fake.failure = Unavailable("busy")
    delays = []
    for _ in range(4):
        now = time.monotonic()
        engine.cycle(engine.units.values())
        delays.append(engine.schedule.next_due(unit(engine, "a")) - now)
    assert delays[0] < delays[1] < delays[2] < delays[3]
    fake.failure = Unavailable("throttled", retry_after=30)
    now = time.monotonic()
    engine.cycle(engine.units.values())
    assert engine.schedule.next_due(unit(engine, "a")) - now >= 30


def test_group_shares_one_schedule(tmp_path: Path) -> None:
    """Secrets of one provider and interval come due together, so their check is one batch."""
    secrets = "".join(f"  s{i}: {{provider: fake, ref: r{i}}}\n" for i in range(10))
    engine, fake = fake_engine(tmp_path, secrets, jitter="0.5")
    for i in range(10):
        fake.put(f"r{i}", b"x")
    engine.sync()
    assert len({engine.schedule.next_due(u) for u in engine.units.values()}) == 1


def test_moving_pin_is_polled_and_follows(tmp_path: Path) -> None:
    """A pin the provider says moves (a label) is checked each cycle and follows; a fixed pin is not."""
    secrets = "  p: {provider: fake, ref: r1, version: prev}\n  f: {provider: fake, ref: r1, version: 1}\n"
    engine, fake = fake_engine(tmp_path, secrets)
    fake.put("r1", b"one")
    fake.put("r1", b"two")
    engine.sync()
    assert engine.schedule.next_due(unit(engine, "p")) < float("inf")
    assert engine.schedule.next_due(unit(engine, "f")) == float("inf")
    fake.put("r1", b"three")
    fake.fetches.clear()
    assert engine.cycle(engine.units.values()).changed == ["p"]
    assert (tmp_path / "p").read_bytes() == b"two" and (tmp_path / "f").read_bytes() == b"one"


def test_backoff_survives_long_outages(tmp_path: Path) -> None:
    """Thousands of failures in a row keep a bounded backoff (no overflow)."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake.failure = Unavailable("down")
    unit(engine, "a").attempts = 5000
    now = time.monotonic()
    engine.cycle(engine.units.values())
    assert engine.schedule.next_due(unit(engine, "a")) - now <= 2.0  # capped at the 1s interval, plus jitter
