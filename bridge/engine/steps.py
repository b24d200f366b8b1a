"""What the cycle does with each due fetch unit: one pure decision per unit.

    keep    nothing to ask: a live lease not due, a fetched fixed pin
    check   the cheap version check (batched per provider); a fetch only if the version moved
    renew   renew the unit's lease
    fetch   fetch (or issue) the value now

`decide` reads a unit and the time and returns a step; it never calls a provider, never assigns
anything and never logs. The cycle (bridge/engine/cycle.py) groups the decisions and runs each
step as one batched phase per provider.
"""

from __future__ import annotations

import enum

from bridge.engine import lifetimes
from bridge.engine.units import Unit


class Step(enum.Enum):
    KEEP = "keep"
    CHECK = "check"
    RENEW = "renew"
    FETCH = "fetch"


def decide(unit: Unit, now: float, *, force: bool = False) -> Step:
    """The step for `unit` due at `now` (monotonic); `force` (a sync) fetches what is polled."""
    if unit.lease is not None:
        step = lifetimes.due(unit.lease, now)
        if step == "renew":
            return Step.RENEW
        # a live lease is taken as it is, never minted again, even by a sync
        return Step.FETCH if step == "reissue" else Step.KEEP
    if force or unit.fetched is None or unit.error is not None:
        return Step.FETCH
    if unit.fixed:
        return Step.KEEP  # a fetched fixed pin does not change
    if unit.version is None:
        return Step.FETCH  # no versions (env, KV v1): fetch and compare content
    return Step.CHECK
