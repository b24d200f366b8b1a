"""The loop of `run` (bridge/runtime/loop.py): cycles when due, provider upkeep, drift sweeps,
sleeping between due times."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.engine.cycle import Engine
from bridge.runtime.loop import UPKEEP_MIN_SECONDS, Loop
from tests.engines import FakeProvider, fake_engine, make_engine
from tests.polling import wait_for


@contextlib.contextmanager
def running(engine: Engine) -> Iterator[threading.Thread]:
    """The loop over `engine` on a thread, stopped and joined on the way out."""
    stop = threading.Event()
    loop = Loop(engine)
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=10)
        loop.stop()


def test_run_loop_rotates_and_stops(tmp_path: Path) -> None:
    """The loop picks up a new version within the interval and returns when stopped."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n", refresh_interval="200ms")
    fake.put("r1", b"one")
    engine.sync()
    with running(engine) as thread:
        fake.put("r1", b"two")
        assert wait_for(lambda: (tmp_path / "a").read_bytes() == b"two", timeout=5)
    assert not thread.is_alive()


class UpkeepProvider(FakeProvider):
    """Asks for its upkeep every `every` seconds (None: never); counts the calls."""

    def __init__(self, every: float | None) -> None:
        super().__init__()
        self.every = every
        self.upkeeps = 0

    def maintain(self) -> float | None:
        self.upkeeps += 1
        return self.every


@pytest.mark.parametrize("every", [None, 0.0])
def test_run_sleeps_until_something_is_due(tmp_path: Path, every: float | None) -> None:
    """With a one-hour refresh the loop wakes only for what asks: a provider upkeep that never comes
    due runs once, one due at once runs at most every UPKEEP_MIN_SECONDS; nothing is polled."""
    fake = UpkeepProvider(every)
    fake.put("r1", b"one")
    engine = make_engine(tmp_path, "  a: {provider: fake, ref: r1}\n", instances={"fake": fake}, refresh_interval="1h")
    engine.sync()
    with running(engine):
        time.sleep(2.5)
        assert engine.stalled_seconds() == 0.0  # waiting, so alive however long ago it last worked
    assert engine.stalled_seconds() < 2.0  # the 2.5 s wait that just ended is no stall
    engine.close()
    if every is None:
        assert fake.upkeeps == 1
    else:
        assert 2 <= fake.upkeeps <= 2.5 / UPKEEP_MIN_SECONDS + 1
    assert len(fake.checks) <= 1 and len(fake.fetches) == 1  # only the sync's fetch: nothing was due


def test_run_repairs_drift_without_a_runner(tmp_path: Path) -> None:
    """The loop with only a threading.Event to wait on (nothing a watch could wake) sweeps on the
    4 s clock: a deleted link is put back within the SPEC's 5 s although nothing is due for an hour."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n", refresh_interval="1h")
    fake.put("r1", b"one")
    engine.sync()
    with running(engine):
        time.sleep(0.5)  # the loop is asleep
        (tmp_path / "a").unlink()
        assert wait_for(lambda: (tmp_path / "a").is_symlink(), timeout=5)
        assert (tmp_path / "a").read_bytes() == b"one"
    engine.close()


def test_a_reloaded_engine_is_driven_and_its_upkeep_asked_at_once(tmp_path: Path) -> None:
    """`use` (a reload) hands the loop a new engine: its providers' upkeep runs at the next turn
    although the old one's was not due for an hour, and its units are the ones refreshed."""
    secrets = "  a: {provider: fake, ref: r1}\n"
    old, new = UpkeepProvider(3600.0), UpkeepProvider(3600.0)
    old.put("r1", b"one")
    first = make_engine(tmp_path, secrets, instances={"fake": old}, refresh_interval="200ms")
    first.sync()
    loop = Loop(first)
    loop.run(_OneTurn())
    assert old.upkeeps == 1
    first.close(release=False)
    new.put("r1", b"two")
    second = make_engine(tmp_path, secrets, instances={"fake": new}, engine_args={"writer": first.writer},
                         refresh_interval="200ms")
    loop.use(second)
    loop.run(_OneTurn())
    assert new.upkeeps == 1 and old.upkeeps == 1
    assert (tmp_path / "a").read_bytes() == b"two"
    loop.stop()
    second.close()


class _OneTurn:
    """A waiter that lets the loop make one turn: set once asked, and never waits."""

    def __init__(self) -> None:
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > 1

    def wait(self, timeout: float | None = None) -> None:
        return None
