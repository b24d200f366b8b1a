"""A leased or issued value's lifetime (bridge/engine/lifetimes.py): when it is renewed, when it is
issued anew, how a failure backs off within what is left; pure, on the clocks the test gives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.engine import lifetimes
from bridge.engine.lifetimes import Lease
from bridge.provider import Fetched

NOW = 1000.0
WALL = 1_700_000_000.0


def leased(ttl: float = 30.0, renewable: bool = True) -> Fetched:
    return Fetched(b"v", "lease-1", expires_at=WALL + ttl, lease_id="db/creds/app/1", lease_seconds=ttl,
                   renewable=renewable, obtained_at=WALL)


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


def test_due_a_second_early_and_not_before() -> None:
    """`due` names the lease's step from a second before its time on, and nothing earlier or without a lease."""
    lease = lifetimes.issued(leased(30), NOW, WALL)
    assert lifetimes.due(lease, lease.at - 1) == "renew"
    assert lifetimes.due(lease, lease.at - 1.5) is None
    assert lifetimes.due(replace(lease, action="reissue"), lease.at + 60) == "reissue"
    assert lifetimes.due(None, NOW + 1e9) is None


def test_not_renewable_lease_is_issued_anew() -> None:
    """A lease that cannot be renewed is issued anew at 85-90% of its life, never renewed."""
    lease = lifetimes.issued(leased(100, renewable=False), NOW, WALL)
    assert lease.action == "reissue" and NOW + 85 <= lease.at <= NOW + 90


def test_renewal_past_the_end_is_an_issue() -> None:
    """A renewable lease whose value ends before 2/3 of its grant (a token ending first) is issued anew."""
    capped = replace(leased(300), expires_at=WALL + 30)
    lease = lifetimes.issued(capped, NOW, WALL)
    assert lease.action == "reissue" and lease.at < NOW + 30


def test_full_renewal_keeps_renewing() -> None:
    """A renewal that grants what was asked is not short: the next renewal is at 2/3 of the grant."""
    lease = lifetimes.issued(leased(30), NOW, WALL)
    renewed, short = lifetimes.renewed(lease, replace(leased(30), obtained_at=WALL + 20, expires_at=WALL + 50),
                                       NOW + 20, WALL + 20)
    assert not short and renewed.action == "renew" and renewed.at == pytest.approx(NOW + 40)


def test_wall_clock_skew_does_not_change_the_life() -> None:
    """A server clock an hour off ours gives the same life: only the server's own times are compared."""
    ahead = Fetched(b"c", "serial", expires_at=WALL + 3600 + 100, obtained_at=WALL + 3600)
    behind = Fetched(b"c", "serial", expires_at=WALL - 3600 + 100, obtained_at=WALL - 3600)
    assert lifetimes.valid_seconds(ahead, WALL + 3600) == pytest.approx(100)
    assert lifetimes.valid_seconds(behind, WALL - 3600) == pytest.approx(100)
    assert lifetimes.issued(ahead, NOW, WALL + 3600).left(NOW) == pytest.approx(100)


def test_value_without_expiry_has_no_life_to_count() -> None:
    """A value with no expiry has no valid_seconds and its lease no `left`."""
    assert lifetimes.valid_seconds(Fetched(b"v", "1"), WALL) is None
    assert Lease(NOW, None, None).left(NOW) is None


def test_retry_of_an_endless_lease_keeps_the_delay() -> None:
    """A lease with no end backs off by the schedule's delay, and stays a renewal."""
    lease = Lease(NOW, None, 30.0, "renew", NOW)
    assert lifetimes.retry(lease, 30.0, NOW) == (lease, 30.0)


def test_retry_after_the_end_is_a_new_issue() -> None:
    """A lease already past its end is issued anew after the schedule's delay."""
    kept, delay = lifetimes.retry(Lease(NOW - 40, NOW - 10, 30.0, "renew", NOW), 3.0, NOW)
    assert kept.action == "reissue" and delay == 3.0
