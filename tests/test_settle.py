"""Applying a cycle's outcomes to the fetch units (bridge/engine/settle.py): a success reschedules,
a failure backs off and marks the unit's entries once, a recovery is logged once, a fetched fixed
pin is never polled again, a lease puts its unit on the lease's clock."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.engine.phases import Found
from bridge.engine.settle import Settler
from bridge.engine.units import Unit
from bridge.errors import AccessDenied, Unavailable
from bridge.provider import Fetched
from tests.engines import FakeProvider, config_text

SECRETS = ("  db: {provider: fake, ref: db/creds}\n"
           '  pinned: {provider: fake, ref: app/key, version: "2"}\n')
INTERVAL = 60.0


class Rig:
    """A Settler over an engine's (not started) schedule, lease keeper and outputs; `marks` holds
    the entries it marked for the state file, in order."""

    def __init__(self, tmp_path: Path) -> None:
        fake = FakeProvider()
        config = parse_config(config_text(tmp_path / "out", SECRETS, instances={"fake": fake},
                                          refresh_interval=f"{INTERVAL:.0f}s"))
        self.engine = Engine(config, providers={"fake": fake})
        self.marks: list[str] = []
        self.settler = Settler(self.engine.schedule, self.engine.leases, self.engine.outputs.__getitem__,
                               self.marks.extend)

    def unit(self, entry: str) -> Unit:
        return self.engine.outputs[entry].units[""]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_success_takes_the_value_and_joins_the_group(rig: Rig) -> None:
    """A fetched new version is taken, marks its entry, and puts the unit on its group's interval."""
    unit, now = rig.unit("db"), time.monotonic()
    assert rig.settler.settle({unit: Fetched(b"v", "1")}, now) == {}
    assert unit.version == "1" and unit.fetched is not None and unit.refreshed_at is not None
    assert rig.marks == ["db"]
    assert not rig.engine.schedule.on_timer(unit)
    assert rig.engine.schedule.next_due(unit) == pytest.approx(now + INTERVAL)


def test_the_same_version_marks_nothing(rig: Rig) -> None:
    """Fetching the version already held changes no state record."""
    unit, now = rig.unit("db"), time.monotonic()
    rig.settler.settle({unit: Fetched(b"v", "1")}, now)
    rig.settler.settle({unit: Fetched(b"v", "1")}, now + INTERVAL)
    assert rig.marks == ["db"]


def test_a_failure_backs_off_and_names_where(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """A failure is recorded with its provider and ref, counted, marks the entry, is logged, and the
    unit is due again after a backoff; the failed outputs are returned."""
    unit, now = rig.unit("db"), time.monotonic()
    caplog.set_level(logging.INFO, logger="secrets_bridge.engine")
    failed = rig.settler.settle({unit: Unavailable("down")}, now)
    assert list(failed) == ["db"] and failed["db"].provider == "fake" and failed["db"].ref == "db/creds"
    assert unit.error is failed["db"] and unit.attempts == 1 and unit.failing_since == now
    assert rig.marks == ["db"]
    assert now < rig.engine.schedule.next_due(unit) <= now + INTERVAL
    assert [r.getMessage() for r in caplog.records] == ["secret db: fake: db/creds: down (unavailable); no file yet"]


def test_a_repeated_failure_is_counted_not_told_again(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """The same failure again counts an attempt but marks and logs nothing, and keeps when it began;
    another kind of failure is told."""
    unit, now = rig.unit("db"), time.monotonic()
    rig.settler.settle({unit: Unavailable("down")}, now)
    caplog.set_level(logging.INFO, logger="secrets_bridge.engine")
    caplog.clear()
    rig.settler.settle({unit: Unavailable("still down")}, now + 5)
    assert unit.attempts == 2 and unit.failing_since == now and rig.marks == ["db"] and caplog.records == []
    rig.settler.settle({unit: AccessDenied("no")}, now + 10)
    assert rig.marks == ["db", "db"] and len(caplog.records) == 1


def test_quiet_failures_are_not_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """With quiet=True a new failure is recorded but not logged."""
    unit = rig.unit("db")
    caplog.set_level(logging.INFO, logger="secrets_bridge.engine")
    rig.settler.settle({unit: Unavailable("down")}, time.monotonic(), quiet=True)
    assert unit.error is not None and caplog.records == []


def test_a_recovered_unit_is_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """The first success after failures logs one "recovered" line, clears the failure and marks the entry."""
    unit, now = rig.unit("db"), time.monotonic() + 100
    rig.settler.settle({unit: Fetched(b"v", "1")}, now - 100)
    rig.settler.settle({unit: Unavailable("down")}, now)
    rig.settler.settle({unit: Unavailable("down")}, now + 2)
    caplog.set_level(logging.INFO, logger="secrets_bridge.engine")
    rig.settler.settle({unit: Fetched(b"v", "1")}, now + 10)
    rig.settler.settle({unit: Fetched(b"v", "1")}, now + 70)
    assert rig.marks == ["db", "db", "db"]  # the first value, the failure, the recovery (same version)
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered == ["fake:db/creds: recovered after 2 attempts (10s)"]
    assert unit.error is None and unit.attempts == 0 and unit.failing_since is None
    assert not rig.engine.schedule.on_timer(unit)


def test_a_fixed_pin_is_never_polled_again(rig: Rig) -> None:
    """A fetched pin that never moves leaves every schedule: never due, whatever the time."""
    unit, now = rig.unit("pinned"), time.monotonic()
    assert unit.fixed
    rig.settler.settle({unit: Fetched(b"v", "2")}, now)
    assert rig.engine.schedule.next_due(unit) == math.inf
    assert unit not in rig.engine.schedule.due(now + 1e9)


def test_a_leased_value_goes_on_its_lease_clock(rig: Rig) -> None:
    """A value with a lease is due at its renewal (2/3 of 30 s), not at the group's interval."""
    unit, now, wall = rig.unit("db"), time.monotonic(), time.time()
    leased = Fetched(b"v", "lease-1", expires_at=wall + 30, lease_id="db/creds/1", lease_seconds=30,
                     renewable=True, obtained_at=wall)
    rig.settler.settle({unit: leased}, now)
    assert unit.lease is not None and unit.lease.action == "renew"
    assert rig.engine.schedule.on_timer(unit)
    assert rig.engine.schedule.next_due(unit) == pytest.approx(now + 20, abs=1)


def test_unchanged_idle_unit_only_refreshes(rig: Rig) -> None:
    """A unit checked unchanged on its group's schedule gets a new refreshed time and nothing else."""
    unit, now = rig.unit("db"), time.monotonic()
    rig.settler.settle({unit: Fetched(b"v", "1")}, now)
    due, before = rig.engine.schedule.next_due(unit), unit.refreshed_at
    time.sleep(0.01)
    rig.settler.settle({unit: None}, now + INTERVAL)
    assert unit.refreshed_at is not None and before is not None and unit.refreshed_at > before
    assert rig.engine.schedule.next_due(unit) == due and rig.marks == ["db"]


def test_found_confirms_and_reissues_lost_leases(rig: Rig) -> None:
    """`found` stamps the confirmed units with the answer's time and makes each lost lease a new issue now."""
    db, pinned, now, wall = rig.unit("db"), rig.unit("pinned"), time.monotonic(), time.time()
    leased = Fetched(b"v", "lease-1", expires_at=wall + 30, lease_id="db/creds/1", lease_seconds=30,
                     renewable=True, obtained_at=wall)
    rig.settler.settle({db: leased}, now)
    rig.settler.found(Found(confirmed=[pinned], lost=[db], wall=12345.0), now + 3)
    assert pinned.refreshed_at == 12345.0
    assert db.lease is not None and (db.lease.action, db.lease.at) == ("reissue", now + 3)


def test_revoked_values_are_forgotten(rig: Rig) -> None:
    """Revoked units lose their value and lease; True only when there were any."""
    unit = rig.unit("db")
    rig.settler.settle({unit: Fetched(b"v", "1")}, time.monotonic())
    assert rig.settler.revoked([unit]) and unit.fetched is None and unit.lease is None
    assert not rig.settler.revoked([])
