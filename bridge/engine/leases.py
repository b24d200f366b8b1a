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
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from bridge.config.fields import LEASE_FILE
from bridge.errors import ProviderError, SecretNotFound, WriteError, contained
from bridge.observe.metrics import LEASE_EXPIRY, LEASE_ISSUES, LEASE_RENEWALS
from bridge.provider import Fetched, Provider, leases_of

if TYPE_CHECKING:
    from bridge.engine.schedule import Schedule
    from bridge.engine.units import Unit
    from bridge.writer.atomic import Writer

log = logging.getLogger("secrets_bridge.engine")

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


def unit_key(unit: Unit, origin: str | None = None) -> str:
    """The key of a unit's record in the store; `origin` (the provider's server) keeps a lease
    from another server (the config's address changed) from being resumed."""
    request = unit.request
    return json.dumps([unit.provider, request.ref, request.version, request.params, origin])


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

    def check(self) -> None:
        """Raise ValueError unless every field has its type (the store is a file anyone with the
        bridge's uid may have edited)."""
        numbers = (self.expires_at, self.lease_seconds, self.obtained_at, self.asked_seconds)
        texts = (self.version, self.content_type, self.lease_id)
        if not (all(n is None or (isinstance(n, int | float) and not isinstance(n, bool)) for n in numbers)
                and all(t is None or isinstance(t, str) for t in texts) and isinstance(self.renewable, bool)
                and isinstance(self.issued_at, int | float) and isinstance(self.value, str)):
            raise ValueError("a lease record has a field of the wrong type")
        base64.b64decode(self.value, validate=True)

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
            records = {key: StoredLease(**fields) for key, fields in doc["leases"].items()}
            for record in records.values():
                record.check()  # an edited or foreign store must not stop the bridge later
            return records
        except (WriteError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("the lease store is unreadable; ignoring it (leases are issued anew)")
            return {}

    def save(self, leases: dict[str, StoredLease]) -> None:
        data = json.dumps({"leases": {k: asdict(v) for k, v in sorted(leases.items())}}).encode()
        self.writer.write_state(LEASE_FILE, data, mode=0o600)

    def remove(self) -> None:
        self.writer.remove_state(LEASE_FILE)


@dataclass(frozen=True)
class Renewed:
    """A lease renewed: the same value with new timing (no file changes)."""

    fetched: Fetched


class LeaseKeeper:
    """The lifecycle of the leased units: resume at start, renew or issue anew on their own clock,
    keep the store, revoke on exit. A lease belongs to its fetch unit; this only drives it."""

    def __init__(self, writer: Writer, providers: dict[str, Provider], schedule: Schedule) -> None:
        self.store = LeaseStore(writer)
        self.providers = providers
        self.schedule = schedule
        self.dirty = False
        self._save_failing = False

    def resume(self, units: Iterable[Unit]) -> None:
        """Take back the leases the output directory holds, if they are still alive: a restart
        (or the sidecar after the init container) never mints what it already has."""
        # A fresh engine (start, reload) publishes expiries anew: an entry a reload removed must not
        # keep a frozen gauge that fires the expiry alert forever.
        LEASE_EXPIRY.clear()
        stored = self.store.load()
        if not stored:
            return
        now, wall = time.monotonic(), time.time()
        for unit in units:
            record = stored.get(unit_key(unit, _origin(self.providers[unit.provider])))
            if record is None or (record.lease_id is None and unit.request.params is None):
                continue  # only a lease or an issued value (params) is resumed, never a polled value
            fetched = record.fetched()
            provider = self.providers[unit.provider]
            leases = leases_of(provider)
            if fetched.lease_id is not None and leases is not None:
                remaining = contained(provider.name, functools.partial(leases.lease_alive, fetched.lease_id))
                if remaining is None:
                    log.info("%s: the stored lease is gone; issuing anew", unit.describe())
                    LEASE_ISSUES.labels(reason="resume_lost", outcome="ok").inc()
                    continue
                if isinstance(remaining, float | int):
                    # never later than recorded: a lease ends with the token that minted it
                    ends = wall + float(remaining)
                    fetched = replace(fetched, expires_at=min(ends, fetched.expires_at or ends))
                # An unreachable vault: keep the lease (minting twice is worse); its renewal retries.
            elif fetched.expires_at is None or fetched.expires_at <= wall:
                continue
            unit.fetched, unit.version = fetched, fetched.version
            unit.lease = Lease(record.issued_at, record.asked_seconds)
            unit.lease.plan(fetched, wall)
            self.scheduled(unit, now, wall)
            log.info("%s: resumed its lease (expires in %.0fs)", unit.describe(), (fetched.expires_at or wall) - wall)

    def due(self, unit: Unit, wall: float) -> str | None:
        """"renew" or "reissue" when the unit's lease step has come, else None."""
        lease = unit.lease
        return lease.action if lease is not None and wall >= lease.at - 1 else None

    def renew(self, provider: Provider, unit: Unit) -> Renewed | ProviderError | None:
        """Renew; None when the lease cannot be renewed any more, so a new issue is due now."""
        assert unit.fetched is not None and unit.lease is not None
        leases = leases_of(provider)
        try:
            if leases is None:
                raise SecretNotFound("the provider has no leases")
            return Renewed(leases.renew(unit.fetched, unit.lease.asked_seconds))
        except SecretNotFound:
            # revoked, expired or not renewable: only a new issue helps, and at once
            log.warning("%s: the lease cannot be renewed any more; issuing anew", unit.describe())
            unit.lease.action, unit.lease.at = "reissue", time.time()
            return None
        except ProviderError as exc:
            return exc

    def issued(self, unit: Unit, fetched: Fetched, wall: float) -> None:
        """A fresh value: if it is leased, start its lifecycle (and keep it for a restart)."""
        reason = "first" if unit.lease is None else "reissue"
        if not is_leased(unit):
            unit.lease = None
            return
        issued = fetched.obtained_at or wall
        asked = fetched.lease_seconds or ((fetched.expires_at or issued) - issued) or None
        unit.lease = Lease(issued, asked)
        unit.lease.plan(fetched, wall)
        LEASE_ISSUES.labels(reason=reason, outcome="ok").inc()
        self.dirty = True
        log.info("%s: issued (%s; next %s in %.0fs)", unit.describe(), "lease" if fetched.lease_id else "expiring",
                 unit.lease.action, unit.lease.at - wall)

    def renewed(self, unit: Unit, fetched: Fetched, wall: float) -> None:
        assert unit.lease is not None
        short = unit.lease.short(fetched)
        unit.fetched = fetched
        unit.lease.plan(fetched, wall, short=short)
        LEASE_RENEWALS.labels(outcome="short" if short else "ok").inc()
        self.dirty = True
        if short:
            log.info("%s: renewal gave %.0fs of %.0fs asked (max_ttl): issuing anew in %.0fs", unit.describe(),
                     fetched.lease_seconds or 0, unit.lease.asked_seconds or 0, unit.lease.at - wall)

    def scheduled(self, unit: Unit, now: float, wall: float) -> None:
        """Put the unit on its lease's clock; publish its expiry."""
        assert unit.lease is not None
        self.schedule.at(unit, now + max(0.0, unit.lease.at - wall))
        if unit.fetched is not None and unit.fetched.expires_at is not None:
            for name in unit.entries:
                LEASE_EXPIRY.labels(secret=name).set(unit.fetched.expires_at)

    def retry_delay(self, unit: Unit, delay: float) -> float:
        """Back off within the time the lease has left, and say loudly when it will lapse."""
        lease, fetched = unit.lease, unit.fetched
        if lease is None or fetched is None or fetched.expires_at is None:
            return delay
        left = fetched.expires_at - time.time()
        if lease.action == "renew":
            LEASE_RENEWALS.labels(outcome="failed").inc()
        else:
            LEASE_ISSUES.labels(reason="reissue", outcome="failed").inc()
        if left <= 2 * delay:
            lease.action = "reissue"  # too late to renew: a new issue is all that helps
        if left <= 0:
            log.error("%s: the lease has lapsed; the files keep the expired value until a new issue works",
                      unit.describe())
        elif left < 4 * delay or left < 0.2 * max(1.0, fetched.expires_at - lease.issued_at):
            log.error("%s: the lease lapses in %.0fs; retrying", unit.describe(), left)
        return max(0.5, min(delay, left / 4)) if left > 0 else delay

    def save(self, units: Iterable[Unit], *, force: bool = False) -> None:
        """Write the store when a lease changed (before the commit of its files: a crash between the
        two resumes the new lease); remove it when no lease is left."""
        if not (self.dirty or force):
            return
        kept = {unit_key(u, _origin(self.providers[u.provider])): StoredLease.of(u.fetched, u.lease) for u in units
                if u.lease is not None and u.fetched is not None}
        try:
            if kept:
                self.store.save(kept)
            else:
                self.store.remove()
            self.dirty = self._save_failing = False
        except WriteError as exc:
            if not self._save_failing:  # once, not at every cycle of a full tmpfs
                log.warning("cannot write the lease store: %s", exc)
            self._save_failing = True

    def revoke(self, units: Iterable[Unit], *, only: Callable[[Unit], bool] | None = None) -> bool:
        """Revoke the leases of providers with `revoke_on_exit` (or those `only` picks)."""
        revoked = False
        for unit in units:
            provider, fetched = self.providers[unit.provider], unit.fetched
            leases = leases_of(provider)
            if fetched is None or fetched.lease_id is None or leases is None:
                continue
            if not (only(unit) if only is not None else leases.revoke_on_exit):
                continue
            outcome = contained(provider.name, functools.partial(leases.revoke, fetched.lease_id))
            if isinstance(outcome, ProviderError):
                log.warning("%s: cannot revoke its lease: %s", unit.describe(), outcome)
            else:
                log.info("%s: revoked its lease", unit.describe())
                unit.fetched, unit.lease, revoked = None, None, True
        return revoked


def _origin(provider: Provider) -> str | None:
    leases = leases_of(provider)
    return leases.origin() if leases is not None else None
