"""Applying what a cycle found to the fetch units: the one module that assigns a unit's state.

The schedule (when next), the lease keeper (a lifetime, a resumed value) and the phases (what each
provider answered) return decisions; `Settler` applies them to the units, reschedules them, and
says which outputs' state records changed. A success puts a unit back on its group's schedule (or
its lease's clock, or nowhere for a fetched fixed pin); a failure backs it off. Never calls a
provider and never logs a value.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

from bridge.engine import failures
from bridge.engine.leases import LeaseKeeper, Renewed, Resumed
from bridge.engine.outputs import Output
from bridge.engine.phases import Found, Outcome
from bridge.engine.schedule import Schedule
from bridge.engine.units import Unit
from bridge.errors import ProviderError
from bridge.provider import Fetched

log = logging.getLogger("secrets_bridge.engine")


class Settler:
    def __init__(self, schedule: Schedule, leases: LeaseKeeper, output: Callable[[str], Output],
                 mark: Callable[[Iterable[str]], None]) -> None:
        self.schedule = schedule
        self.leases = leases
        self._output = output
        self._mark = mark

    def resumed(self, found: dict[Unit, Resumed]) -> None:
        """Take back the leases the lease keeper found alive."""
        now = time.monotonic()
        for unit, resumed in found.items():
            unit.fetched, unit.version, unit.lease = resumed.fetched, resumed.fetched.version, resumed.lease
            self.schedule.at(unit, resumed.lease.at)
            self.leases.publish(unit, now)

    def revoked(self, units: list[Unit]) -> bool:
        """Forget the values whose leases were revoked."""
        for unit in units:
            unit.fetched, unit.lease = None, None
        return bool(units)

    def found(self, found: Found, now: float) -> None:
        """What a provider's phases found that is no outcome: the confirmed, the leases lost."""
        for unit in found.confirmed:
            unit.refreshed_at = found.wall  # the idle path: confirmed, and nothing to settle
        for unit in found.lost:
            assert unit.lease is not None
            unit.lease = replace(unit.lease, action="reissue", at=now)

    def settle(self, outcomes: dict[Unit, Outcome], now: float, *, quiet: bool = False) -> dict[str, ProviderError]:
        """Record each unit's outcome: a success reschedules it, a failure backs it off. Returns the
        outputs that failed."""
        failed: dict[str, ProviderError] = {}
        newly: dict[tuple[str, str], list[Unit]] = defaultdict(list)
        wall = time.time()
        for unit, outcome in outcomes.items():
            if outcome is None and unit.error is None and unit.lease is None and not self.schedule.on_timer(unit):
                unit.refreshed_at = wall  # the idle path: checked, unchanged, still on its group's schedule
                continue
            if isinstance(outcome, ProviderError):
                error = outcome.at(provider=unit.provider, ref=unit.request.ref, version=unit.request.version)
                if unit.error is None or type(unit.error) is not type(error):
                    newly[(unit.provider, error.code)].append(unit)
                self._fail(unit, error, now)
                failed.update(dict.fromkeys(unit.entries, error))
                continue
            self._took(unit, outcome, now, wall)
            self._succeed(unit, now)
        for (provider, code), units in newly.items():
            if not quiet:
                failures.log_new_failures(provider, code, units, self._output)
        return failed

    def _took(self, unit: Unit, outcome: Fetched | Renewed | None, now: float, wall: float) -> None:
        if isinstance(outcome, Renewed):
            unit.lease = self.leases.renewed(unit, outcome.fetched, now, wall)
            unit.fetched = outcome.fetched
        elif isinstance(outcome, Fetched):
            if outcome.version != unit.version:
                self._mark(unit.entries)
            unit.lease = self.leases.issued(unit, outcome, now, wall)
            unit.fetched, unit.version = outcome, outcome.version
        unit.refreshed_at = wall

    def _succeed(self, unit: Unit, now: float) -> None:
        if unit.error is not None:
            log.info("%s: recovered after %d attempts (%.0fs)", unit.describe(), unit.attempts,
                     now - (unit.failing_since or now))
            failures.failing(unit.entries, unit.error, None)
            unit.error, unit.failing_since, unit.attempts = None, None, 0
            self._mark(unit.entries)
        if unit.lease is not None:
            self.schedule.at(unit, unit.lease.at)  # on its lease's clock
            self.leases.publish(unit, now)
        elif unit.fixed:
            self.schedule.never(unit)  # not polled until its pin changes
        else:
            self.schedule.polled(unit, now)

    def _fail(self, unit: Unit, error: ProviderError, now: float) -> None:
        if unit.error is None or type(unit.error) is not type(error):
            self._mark(unit.entries)
            failures.failing(unit.entries, unit.error, error)
        unit.failing_since = unit.failing_since if unit.failing_since is not None else now
        unit.error = error
        unit.attempts += 1
        delay = self.schedule.backoff(unit, error)
        if unit.lease is not None:
            unit.lease, delay = self.leases.retry(unit, delay, now)
        self.schedule.at(unit, now + delay)
