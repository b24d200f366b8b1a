"""Leased values: when to renew, when to issue anew, and the store a restarted bridge resumes from.

A leased value (a Vault dynamic secret) is renewed at about 2/3 of its TTL. When renewal gives less
than asked (max_ttl reached), or the lease is not renewable, or a certificate has only an
expiration, it is issued anew at 85-90% of its lifetime (jittered), and the old lease is left to
expire, since applications may still hold connections made with it.

The store keeps what a restarted bridge needs to take its leases back instead of minting new ones
(the init container handing over to the sidecar, a crash): value, version and lease timing per
fetch unit. It lives in the output directory's tmpfs, mode 0600, never in the 0644 state file, and
is never logged.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bridge.errors import WriteError
from bridge.fields import LEASE_FILE
from bridge.provider import Fetched

if TYPE_CHECKING:
    from bridge.units import Unit
    from bridge.writer import Writer

RENEW_AT = 2 / 3
REISSUE_AT = (0.85, 0.90)
#: a renewal granting less than asked by more than this is "max_ttl reached"
_SHORT_SECONDS = 1.0


def is_leased(unit: Unit) -> bool:
    """Time drives this unit, not refresh_interval: a lease, or an issued value with an expiry."""
    fetched = unit.fetched
    return fetched is not None and (
        fetched.lease_id is not None or (unit.request.params is not None and fetched.expires_at is not None))


@dataclass
class Lease:
    """The lifecycle of one leased unit's current value."""

    #: epoch of the issue (not of the last renewal): the lifetime runs from here
    issued_at: float
    #: the TTL granted at issue, asked again at each renewal
    asked_seconds: float | None
    #: "renew" or "reissue", and when (epoch)
    action: str = "renew"
    at: float = 0.0

    def plan(self, fetched: Fetched, now: float, *, short: bool = False) -> None:
        """Decide the next step for `fetched` (just issued or just renewed)."""
        if fetched.renewable and fetched.lease_id is not None and fetched.lease_seconds and not short:
            self.action, self.at = "renew", now + fetched.lease_seconds * RENEW_AT
            if fetched.expires_at is None or self.at < fetched.expires_at:
                return
        expires = fetched.expires_at if fetched.expires_at is not None else now
        lifetime = max(0.0, expires - self.issued_at)
        self.action = "reissue"
        self.at = max(now, self.issued_at + lifetime * random.uniform(*REISSUE_AT))  # noqa: S311

    def short(self, renewed: Fetched) -> bool:
        """Whether a renewal gave less than asked (max_ttl reached): time to plan a new issue."""
        granted = renewed.lease_seconds or 0.0
        if renewed.expires_at is not None and renewed.obtained_at is not None:
            granted = min(granted, renewed.expires_at - renewed.obtained_at)  # e.g. capped by the token's end
        return self.asked_seconds is not None and granted + _SHORT_SECONDS < self.asked_seconds


def unit_key(unit: Unit) -> str:
    request = unit.request
    return json.dumps([unit.provider, request.ref, request.version, request.params])


@dataclass
class StoredLease:
    value: str  # base64
    version: str | None
    content_type: str | None
    expires_at: float | None
    lease_id: str | None
    lease_seconds: float | None
    renewable: bool
    obtained_at: float | None
    issued_at: float
    asked_seconds: float | None

    def __repr__(self) -> str:
        return "<StoredLease>"

    @classmethod
    def of(cls, fetched: Fetched, lease: Lease) -> StoredLease:
        return cls(base64.b64encode(fetched.value).decode(), fetched.version, fetched.content_type,
                   fetched.expires_at, fetched.lease_id, fetched.lease_seconds, fetched.renewable,
                   fetched.obtained_at, lease.issued_at, lease.asked_seconds)

    def fetched(self) -> Fetched:
        return Fetched(base64.b64decode(self.value), self.version, self.content_type, self.expires_at,
                       self.lease_id, self.lease_seconds, self.renewable, self.obtained_at)


class LeaseStore:
    """The 0600 file in the output directory a restarted bridge resumes its leases from."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def load(self) -> dict[str, StoredLease]:
        try:
            data = self.writer.read_state(LEASE_FILE)
            doc: Any = json.loads(data) if data is not None else {"leases": {}}
            return {key: StoredLease(**fields) for key, fields in doc["leases"].items()}
        except (WriteError, ValueError, KeyError, TypeError):
            return {}

    def save(self, leases: dict[str, StoredLease]) -> None:
        data = json.dumps({"leases": {k: asdict(v) for k, v in sorted(leases.items())}}).encode()
        self.writer.write_state(LEASE_FILE, data, mode=0o600)

    def remove(self) -> None:
        self.writer.remove_state(LEASE_FILE)
