"""The lifetime of a leased or issued value: when to renew it, when to issue it anew. Pure.

Every time here is the monotonic clock of this process, and every lifetime a duration: what the
server granted (`lease_duration`), or the seconds a certificate has left as measured on the
server's own clock (bridge/provider.py `Fetched`: `expires_at - obtained_at`). The wall clock is
never compared with a time another machine wrote, so a skewed clock neither storms nor serves an
expired value.

A renewable lease is renewed at 2/3 of what its last grant (or the server's lookup) gave, however
little is left. When renewal gives less than asked (max_ttl reached), or the lease is not
renewable, or a certificate has only an expiry, it is issued anew at 85-90% of its lifetime
(jittered), and the old lease is left to expire, since applications may still hold connections
made with it. Issues are bounded: a value that arrives with (almost) no life is issued again only
after a doubling delay, never in a loop. Never fetches, logs or holds a value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from bridge.provider import Fetched

RENEW_AT = 2 / 3
REISSUE_AT = (0.85, 0.90)
#: a renewal granting less than asked by more than this is "max_ttl reached"
SHORT_SECONDS = 1.0
#: a value issued with less life than this is "born expired": issued again after a doubling delay
BORN_EXPIRED_SECONDS = 2.0
REISSUE_BACKOFF_CAP_SECONDS = 300.0
#: a request slower than this is not taken off the value's lifetime (a wall clock jump, not a call)
_LONGEST_CALL_SECONDS = 60.0


def valid_seconds(fetched: Fetched, wall: float) -> float | None:
    """How long `fetched` stays valid from now (the answer's `wall` time): the duration the provider
    measured, less the time the call took. None when the value does not expire."""
    if fetched.expires_at is None:
        return None
    start = fetched.obtained_at if fetched.obtained_at is not None else wall
    call = min(max(0.0, wall - start), _LONGEST_CALL_SECONDS)
    return max(0.0, fetched.expires_at - start - call)


@dataclass(frozen=True)
class Lease:
    """Where one leased unit's current value is in its lifetime (monotonic seconds)."""

    #: when the value was issued: its lifetime runs from here
    issued: float
    #: when the value stops being valid (None: only the lease's own grant says)
    ends: float | None
    #: the TTL granted at issue, asked again at each renewal
    asked_seconds: float | None
    #: "renew" or "reissue", and when
    action: str = "renew"
    at: float = 0.0
    #: issues in a row that came with (almost) no life: the next waits 2**n seconds
    born_expired: int = 0

    def left(self, now: float) -> float | None:
        return None if self.ends is None else self.ends - now


def issued(fetched: Fetched, now: float, wall: float, previous: Lease | None = None) -> Lease:
    """The lifetime of a value just issued, answered at `now` (monotonic) / `wall`."""
    seconds = valid_seconds(fetched, wall)
    ends = None if seconds is None else now + seconds
    asked = fetched.lease_seconds or seconds or None
    born_expired = 0
    if seconds is not None and seconds < BORN_EXPIRED_SECONDS:
        born_expired = (previous.born_expired if previous is not None else 0) + 1
    return plan(Lease(now, ends, asked, born_expired=born_expired), fetched, now)


def renewed(lease: Lease, fetched: Fetched, now: float, wall: float) -> tuple[Lease, bool]:
    """The lifetime after a renewal answered at `now`; True when it gave less than asked (max_ttl)."""
    seconds = valid_seconds(fetched, wall)
    granted = fetched.lease_seconds or 0.0
    if seconds is not None:
        granted = min(granted, seconds)  # e.g. capped by the token's end
    short = lease.asked_seconds is not None and granted + SHORT_SECONDS < lease.asked_seconds
    ends = None if seconds is None else now + seconds
    return plan(replace(lease, ends=ends), fetched, now, short=short), short


def resumed(fetched: Fetched, left_seconds: float, lifetime_seconds: float | None, asked: float | None,
            now: float) -> Lease:
    """The lifetime of a value a restarted bridge takes back, with `left_seconds` to live as the
    server (a lease lookup) or the certificate says, out of `lifetime_seconds` at issue."""
    lifetime = max(left_seconds, lifetime_seconds or left_seconds)
    lease = Lease(now - (lifetime - left_seconds), now + left_seconds, asked)
    if fetched.renewable and fetched.lease_id is not None:
        # renew whatever time it has left: a live lease is never minted again
        return replace(lease, action="renew", at=now + left_seconds * RENEW_AT)
    return plan(lease, fetched, now, short=True)


def plan(lease: Lease, fetched: Fetched, now: float, *, short: bool = False) -> Lease:
    """The next step for `fetched` (just issued, renewed or resumed)."""
    if fetched.renewable and fetched.lease_id is not None and fetched.lease_seconds and not short:
        at = now + fetched.lease_seconds * RENEW_AT
        if lease.ends is None or at < lease.ends:
            return replace(lease, action="renew", at=at)
    if lease.born_expired:
        delay = min(REISSUE_BACKOFF_CAP_SECONDS, 2.0 ** lease.born_expired)
        return replace(lease, action="reissue", at=now + delay)
    lifetime = max(0.0, (lease.ends if lease.ends is not None else now) - lease.issued)
    at = lease.issued + lifetime * random.uniform(*REISSUE_AT)  # noqa: S311 - jitter, not security
    return replace(lease, action="reissue", at=max(now, at))


def due(lease: Lease | None, now: float) -> str | None:
    """"renew" or "reissue" when the lease's step has come (a second early), else None."""
    return lease.action if lease is not None and now >= lease.at - 1 else None


def retry(lease: Lease, delay: float, now: float) -> tuple[Lease, float]:
    """A failed step: back off within the time the lease has left (a new issue once renewing is
    too late); returns the lease and the delay."""
    left = lease.left(now)
    if left is None:
        return lease, delay
    if left <= 2 * delay:
        lease = replace(lease, action="reissue")  # too late to renew: a new issue is all that helps
    return lease, (max(0.5, min(delay, left / 4)) if left > 0 else delay)
