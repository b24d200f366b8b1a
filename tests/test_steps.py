"""The pure decisions of a cycle: each due unit's step (bridge/engine/steps.py) and a leased
value's lifetime (bridge/engine/lifetimes.py), with no provider and no clock but the one given."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.engine import lifetimes
from bridge.engine.lifetimes import Lease
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


def test_renewal_planned_at_two_thirds_on_the_monotonic_clock() -> None:
    """An issue with a 30 s lease is renewed 20 s after it was answered, whatever the wall clock says."""
    lease = lifetimes.issued(leased(30), NOW, WALL)
    assert lease.action == "renew" and lease.at == pytest.approx(NOW + 20)
    assert lease.ends == pytest.approx(NOW + 30)


def test_the_call_time_is_taken_off_the_life() -> None:
    """The life is the provider's duration less the time the call took (2 s here); a wall clock
    jump during the call counts as at most a minute."""
    assert lifetimes.issued(leased(300), NOW, WALL + 2).left(NOW) == pytest.approx(298)
    assert lifetimes.issued(leased(300), NOW, WALL + 3600).left(NOW) == pytest.approx(240)


def test_certificate_reissued_at_85_to_90_percent() -> None:
    """An expiring value with no lease is issued anew at 85-90% of its life."""
    cert = Fetched(b"c", "serial", expires_at=WALL + 100, obtained_at=WALL)
    lease = lifetimes.issued(cert, NOW, WALL)
    assert lease.action == "reissue" and NOW + 85 <= lease.at <= NOW + 90


def test_born_expired_values_back_off() -> None:
    """A value that arrives with no life is issued again after 2, 4, 8 ... s, never in a loop."""
    dead = Fetched(b"c", "serial", expires_at=WALL, obtained_at=WALL)
    first = lifetimes.issued(dead, NOW, WALL)
    second = lifetimes.issued(dead, NOW, WALL, first)
    third = lifetimes.issued(dead, NOW, WALL, second)
    assert [x.at - NOW for x in (first, second, third)] == [2.0, 4.0, 8.0]
    assert lifetimes.issued(leased(30), NOW, WALL, third).born_expired == 0


def test_short_renewal_plans_a_new_issue() -> None:
    """A renewal granting less than asked (max_ttl) plans a new issue within what is left."""
    lease = lifetimes.issued(leased(30), NOW, WALL)
    later = NOW + 20
    granted = replace(leased(12), obtained_at=WALL + 20, expires_at=WALL + 32)
    renewed, short = lifetimes.renewed(lease, granted, later, WALL + 20)
    assert short and renewed.action == "reissue"
    assert NOW + 32 * 0.85 <= renewed.at <= NOW + 32 * 0.90 and renewed.ends == pytest.approx(later + 12)


def test_resumed_renewable_lease_is_renewed_whatever_is_left() -> None:
    """A live renewable lease with under a third of its TTL left is renewed, not minted again."""
    lease = lifetimes.resumed(leased(12), 4.0, 12.0, 12.0, NOW)
    assert lease.action == "renew" and NOW < lease.at < NOW + 4.0


def test_resumed_certificate_reissued_within_its_life() -> None:
    """A resumed certificate 80 s into a 100 s life is issued anew before it ends."""
    cert = Fetched(b"c", "serial", expires_at=WALL + 20, obtained_at=WALL - 80)
    lease = lifetimes.resumed(cert, 20.0, 100.0, None, NOW)
    assert lease.action == "reissue" and NOW + 5 <= lease.at <= NOW + 10


def test_retry_within_the_time_left() -> None:
    """A failed renewal backs off to a quarter of what is left, and turns to a new issue near the end."""
    lease = Lease(NOW, NOW + 8, 30.0, "renew", NOW)
    kept, delay = lifetimes.retry(lease, 30.0, NOW)
    assert delay == 2.0 and kept.action == "reissue"
    kept, delay = lifetimes.retry(lease, 1.0, NOW)
    assert delay == 1.0 and kept.action == "renew"


def test_decide_is_pure() -> None:
    """Deciding changes nothing on the unit."""
    u = unit(fetched=Fetched(b"v", "3"), version="3")
    before = repr(u)
    decide(u, NOW)
    assert repr(u) == before
