"""One provider's share of a cycle: each due unit's step decided (bridge/engine/steps.py), then the
steps run as batched phases, in this order:

    1. check   one batched version check for the units whose value has a version
    2. renew   a renewal per lease that is due (a lease that cannot be renewed any more is issued)
    3. fetch   one batched fetch for the rest and for what moved in 1 or was lost in 2

It calls the provider and returns what it found; it assigns nothing on a unit (the cycle applies
the outcome) and never logs a value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bridge.engine.leases import LeaseKeeper, Renewed
from bridge.engine.steps import Step, decide
from bridge.engine.units import Unit
from bridge.errors import ProviderError
from bridge.provider import Fetched, Provider

Outcome = Fetched | Renewed | ProviderError | None  # None: checked, unchanged


@dataclass
class Found:
    """What one provider's phases found."""

    outcomes: dict[Unit, Outcome] = field(default_factory=dict)
    #: checked and unchanged (the idle path: nothing to settle), at `wall`
    confirmed: list[Unit] = field(default_factory=list)
    #: leases that cannot be renewed any more (issued anew in this cycle's fetch)
    lost: list[Unit] = field(default_factory=list)
    wall: float = 0.0


def fetch_from(provider: Provider, units: list[Unit], leases: LeaseKeeper, now: float, *,
               force: bool = False) -> Found:
    """Decide each unit's step, then run the steps as batched phases."""
    steps: dict[Step, list[Unit]] = {step: [] for step in Step}
    for unit in units:
        steps[decide(unit, now, force=force)].append(unit)
    found = Found(dict.fromkeys(steps[Step.KEEP]))
    to_fetch = steps[Step.FETCH]
    to_fetch += _check(provider, steps[Step.CHECK], found)  # 1
    to_fetch += _renew(provider, steps[Step.RENEW], leases, found)  # 2
    found.outcomes.update(_fetch(provider, to_fetch, force))  # 3
    return found


def _check(provider: Provider, units: list[Unit], found: Found) -> list[Unit]:
    """The cheap version check; returns the units whose version moved (to fetch)."""
    if not units:
        return []
    moved = []
    current = provider.versions([u.request for u in units])
    found.wall = time.time()
    for unit in units:
        latest = current.get(unit.request)
        if latest is not None and latest == unit.version:
            found.confirmed.append(unit)  # the idle path, 100,000 times a cycle at scale
        elif isinstance(latest, ProviderError):
            found.outcomes[unit] = latest
        else:
            moved.append(unit)
    return moved


def _renew(provider: Provider, units: list[Unit], leases: LeaseKeeper, found: Found) -> list[Unit]:
    """Renew each lease; returns the units whose lease cannot be renewed any more (to issue)."""
    for unit in units:
        renewed = leases.renew(provider, unit)
        if renewed is None:
            found.lost.append(unit)
        else:
            found.outcomes[unit] = renewed
    return list(found.lost)


def _fetch(provider: Provider, units: list[Unit], force: bool) -> dict[Unit, Outcome]:
    """One batched fetch; a value fetched again unchanged is no outcome (unless `force`)."""
    if not units:
        return {}
    fetched = provider.fetch_many([u.request for u in units])
    outcomes: dict[Unit, Outcome] = {}
    for unit in units:
        outcome = fetched[unit.request]
        same = (isinstance(outcome, Fetched) and unit.fetched is not None and not force
                and outcome.value == unit.fetched.value and outcome.version == unit.version)
        outcomes[unit] = None if same else outcome
    return outcomes
