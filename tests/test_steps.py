"""The pure decision of a cycle: each due unit's step (bridge/engine/steps.py), with no provider and
no clock but the one given. A leased value's lifetime is tested in test_lifetimes.py."""

from __future__ import annotations

from dataclasses import replace

from bridge.engine import lifetimes
from bridge.engine.steps import Step, decide
from bridge.engine.units import Unit
from bridge.errors import Unavailable
from bridge.provider import Fetched, Request

NOW = 1000.0
WALL = 1_700_000_000.0


def unit(**fields) -> Unit:
    return replace(Unit("p", Request("r"), 1.0, False), **fields)


def leased(ttl: float = 30.0, renewable: bool = True) -> Fetched:
    return Fetched(b"v", "lease-1", expires_at=WALL + ttl, lease_id="db/creds/app/1", lease_seconds=ttl,
                   renewable=renewable, obtained_at=WALL)


def test_never_fetched_is_fetched() -> None:
    """A unit with no value yet is fetched."""
    assert decide(unit(), NOW) is Step.FETCH


def test_versioned_value_is_checked_cheaply() -> None:
    """A fetched value with a version gets the cheap check, not a fetch."""
    assert decide(unit(fetched=Fetched(b"v", "3"), version="3"), NOW) is Step.CHECK


def test_unversioned_value_is_fetched_and_compared() -> None:
    """A value with no version (env, KV v1) can only be fetched again."""
    assert decide(unit(fetched=Fetched(b"v", None)), NOW) is Step.FETCH


def test_failing_unit_is_fetched() -> None:
    """A unit whose last attempt failed is fetched, not checked."""
    failing = unit(fetched=Fetched(b"v", "3"), version="3", error=Unavailable("down"))
    assert decide(failing, NOW) is Step.FETCH


def test_fixed_pin_is_kept_but_a_sync_fetches_it() -> None:
    """A fetched fixed pin is never asked again, except by a forced pass (sync)."""
    pinned = unit(fixed=True, fetched=Fetched(b"v", "2"), version="2")
    assert decide(pinned, NOW) is Step.KEEP
    assert decide(pinned, NOW, force=True) is Step.FETCH


def test_lease_steps_follow_the_lease_not_force() -> None:
    """A live lease is kept even by a sync; it is renewed or issued anew when its time comes."""
    fetched = leased()
    lease = lifetimes.issued(fetched, NOW, WALL)
    live = unit(fetched=fetched, version="lease-1", lease=lease)
    assert decide(live, NOW, force=True) is Step.KEEP
    assert decide(live, lease.at) is Step.RENEW
    assert decide(replace(live, lease=replace(lease, action="reissue")), lease.at) is Step.FETCH


def test_decide_is_pure() -> None:
    """Deciding changes nothing on the unit."""
    u = unit(fetched=Fetched(b"v", "3"), version="3")
    before = repr(u)
    decide(u, NOW)
    assert repr(u) == before
