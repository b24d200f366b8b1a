"""When each fetch unit is next due.

Units of one provider and refresh interval share one jittered time, so their change check stays one
batch call, and an idle cycle costs one comparison per group. Units that are failing (backing off),
pinned but not yet fetched, or leased (renewed on their own clock) run on their own timers. When a
unit is next due is this module's own record, never the unit's. Never fetches or logs.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.engine.units import Unit
from bridge.errors import ProviderError

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0


@dataclass(eq=False)
class _Group:
    due: float = 0.0
    members: dict[Unit, None] = field(default_factory=dict)  # a dict: ordered, so plans are repeatable


class Schedule:
    def __init__(self, units: Iterable[Unit], jitter: float) -> None:
        self.jitter = jitter
        self._groups: dict[tuple[str, float], _Group] = defaultdict(_Group)
        #: units on their own timer, and when each is due (all of them until their first success)
        self._timers: dict[Unit, float] = dict.fromkeys(units, 0.0)
        #: units that are never due (a fetched fixed pin)
        self._never: set[Unit] = set()

    def due(self, now: float) -> list[Unit]:
        """Whole groups whose time has come, and units on their own timer whose time has come."""
        due: list[Unit] = []
        for (_, interval), group in self._groups.items():
            if group.members and group.due <= now:
                due.extend(group.members)
                group.due = now + self.jittered(interval)
        due.extend(u for u, when in self._timers.items() if when <= now)
        return due

    def next_wake(self) -> float:
        groups = (g.due for g in self._groups.values() if g.members)
        return min(min(groups, default=math.inf), min(self._timers.values(), default=math.inf))

    def next_due(self, unit: Unit) -> float:
        """When `unit` is next due (monotonic; inf: never)."""
        if unit in self._timers:
            return self._timers[unit]
        if unit in self._never:
            return math.inf
        return self._groups[(unit.provider, unit.interval)].due

    def on_timer(self, unit: Unit) -> bool:
        return unit in self._timers

    def polled(self, unit: Unit, now: float) -> None:
        """A unit polled every interval succeeded: it (re)joins its group's schedule."""
        group = self._groups[(unit.provider, unit.interval)]
        if unit in self._timers or unit in self._never:
            self._timers.pop(unit, None)
            self._never.discard(unit)
            if not group.members or group.due <= now:
                group.due = now + self.jittered(unit.interval)
            group.members[unit] = None

    def never(self, unit: Unit) -> None:
        """A fetched fixed pin: not polled until the pin changes (a reload)."""
        self._timers.pop(unit, None)
        self._groups[(unit.provider, unit.interval)].members.pop(unit, None)
        self._never.add(unit)

    def at(self, unit: Unit, when: float) -> None:
        """Put `unit` on its own timer, due at `when` (monotonic)."""
        self._groups[(unit.provider, unit.interval)].members.pop(unit, None)
        self._never.discard(unit)
        self._timers[unit] = when

    def backoff(self, unit: Unit, error: ProviderError) -> float:
        """Exponential backoff with jitter, capped at the interval (and 5 minutes), slower for
        not-found and access-denied, never sooner than the server's Retry-After."""
        cap = min(BACKOFF_CAP_SECONDS, max(unit.interval, BACKOFF_BASE_SECONDS))
        delay = self.jittered(min(cap, BACKOFF_BASE_SECONDS * error.backoff_factor * 2 ** min(unit.attempts - 1, 30)))
        return delay if error.retry_after is None else max(delay, error.retry_after)

    def jittered(self, seconds: float) -> float:
        return seconds * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 - not for security
