"""Leased values: the lease store a restarted bridge resumes from, and the keeper that drives each
leased unit's lifetime (bridge/engine/lifetimes.py) through its provider.

The keeper decides and calls the provider; it never assigns a unit's state. It returns what it
found (a resumed value and its `Lease`, a renewal, a new `Lease`) and the engine applies it, so one
module writes a unit.

The store keeps what a restarted bridge needs to take its leases back instead of minting new ones
(the init container handing over to the sidecar, a crash): value, version and lease timing per
fetch unit. It lives in the output directory's tmpfs, mode 0600, never in the 0644 state file, and
is never logged. Nothing read from it is trusted for time: a resumed lease's life is the server's
lookup, a resumed certificate's is the certificate's own notAfter; anything else is issued anew.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from bridge import certificates
from bridge.config.fields import LEASE_FILE
from bridge.engine import lifetimes
from bridge.engine.lifetimes import Lease
from bridge.engine.units import Unit
from bridge.errors import ProviderError, SecretNotFound, WriteError, contained
from bridge.observe.metrics import LEASE_EXPIRY, LEASE_ISSUES, LEASE_RENEWALS
from bridge.provider import Fetched, Provider, Request, leases_of
from bridge.writer.atomic import Writer

log = logging.getLogger("secrets_bridge.engine")

def is_leased(request: Request, fetched: Fetched | None) -> bool:
    """Time drives this unit, not refresh_interval: a lease, or an issued value with an expiry."""
    return fetched is not None and (
        fetched.lease_id is not None or (request.params is not None and fetched.expires_at is not None))


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
    def of(cls, fetched: Fetched, lease: Lease, now: float, wall: float) -> StoredLease:
        """The record of a live lease; times as this process's wall clock reads them now (for a
        person reading the file: a resume never trusts them)."""
        expires = None if lease.ends is None else wall + (lease.ends - now)
        return cls(base64.b64encode(fetched.value).decode(), fetched.version, fetched.content_type,
                   expires, fetched.lease_id, fetched.lease_seconds, fetched.renewable,
                   fetched.obtained_at, wall - (now - lease.issued), lease.asked_seconds)

    def check(self) -> None:
        """Raise ValueError unless every field has its type and every number is finite (the store is
        a file anyone with the bridge's uid may have edited)."""
        numbers = (self.expires_at, self.lease_seconds, self.obtained_at, self.asked_seconds, self.issued_at)
        texts = (self.version, self.content_type, self.lease_id)
        if not (all(n is None or (isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n))
                    for n in numbers)
                and all(t is None or isinstance(t, str) for t in texts) and isinstance(self.renewable, bool)
                and self.issued_at is not None and isinstance(self.value, str)):
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
        except WriteError as exc:  # too large, or not a regular file: the message says which
            log.warning("the lease store is unreadable (%s); ignoring it (leases are issued anew)", exc)
            return {}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
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


@dataclass(frozen=True)
class Resumed:
    """A value taken back from the store, checked against the server or its certificate."""

    fetched: Fetched
    lease: Lease


class LeaseKeeper:
    """The lifecycle of the leased units: resume at start, renew or issue anew on their own clock,
    keep the store, revoke on exit. A lease belongs to its fetch unit; this only drives it."""

    def __init__(self, writer: Writer, providers: dict[str, Provider]) -> None:
        self.store = LeaseStore(writer)
        self.providers = providers
        self.dirty = False
        self._save_failing = False

    def resume(self, units: Iterable[Unit]) -> dict[Unit, Resumed]:
        """The leases the output directory holds that are still alive: a restart (or the sidecar
        after the init container) never mints what it already has."""
        # A fresh engine (start, reload) publishes expiries anew: an entry a reload removed must not
        # keep a frozen gauge that fires the expiry alert forever.
        LEASE_EXPIRY.clear()
        stored = self.store.load()
        found: dict[Unit, Resumed] = {}
        if not stored:
            return found
        now, wall = time.monotonic(), time.time()
        for unit in units:
            provider = self.providers[unit.provider]
            record = stored.get(unit_key(unit, _origin(provider)))
            if record is None or (record.lease_id is None and unit.request.params is None):
                continue  # only a lease or an issued value (params) is resumed, never a polled value
            resumed = self._check(unit, provider, record, now, wall)
            if resumed is not None:
                found[unit] = resumed
                left = resumed.lease.left(now)
                log.info("%s: resumed its lease (expires in %.0fs)", unit.describe(), left or 0)
        return found

    def _check(self, unit: Unit, provider: Provider, record: StoredLease, now: float,
               wall: float) -> Resumed | None:
        """A stored value with the life the server (a lease) or its certificate says it has left."""
        fetched = record.fetched()
        if fetched.lease_id is None:
            validity = certificates.validity(fetched.value)
            if validity is None or validity[1] <= wall:
                return None  # expired, or nothing but the store's word for its expiry: issue anew
            left, lifetime = validity[1] - wall, validity[1] - validity[0]
            return Resumed(replace(fetched, expires_at=wall + left), lifetimes.resumed(
                fetched, min(left, lifetime), lifetime, record.asked_seconds, now))
        leases = leases_of(provider)
        if leases is None:
            return None
        remaining = contained(provider.name, functools.partial(leases.lease_alive, fetched.lease_id))
        if remaining is None:
            log.info("%s: the stored lease is gone; issuing anew", unit.describe())
            LEASE_ISSUES.labels(reason="resume_lost", outcome="ok").inc()
            return None
        if isinstance(remaining, ProviderError):
            # An unreachable vault: keep the lease (minting twice is worse) and renew it at once,
            # which asks the server; the store's times only bound it (a lease ends with its token).
            left = max(0.0, min(record.lease_seconds or 0.0, (record.expires_at or wall) - wall))
            lease = Lease(now, now + left, record.asked_seconds, action="renew", at=now)
            return Resumed(replace(fetched, expires_at=wall + left), lease)
        left = float(remaining)
        if record.expires_at is not None:
            left = min(left, max(0.0, record.expires_at - wall))  # never later: a lease ends with its token
        lease = lifetimes.resumed(fetched, left, record.asked_seconds, record.asked_seconds, now)
        return Resumed(replace(fetched, expires_at=wall + left), lease)

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
            return None
        except ProviderError as exc:
            return exc

    def issued(self, unit: Unit, fetched: Fetched, now: float, wall: float) -> Lease | None:
        """A fresh value's lifetime if it is leased (None: polled by interval)."""
        if not is_leased(unit.request, fetched):
            return None
        reason = "first" if unit.lease is None else "reissue"
        lease = lifetimes.issued(fetched, now, wall, unit.lease)
        LEASE_ISSUES.labels(reason=reason, outcome="ok").inc()
        self.dirty = True
        if lease.born_expired:
            log.warning("%s: issued with %.0fs to live; issuing again in %.0fs", unit.describe(),
                        max(0.0, lease.left(now) or 0.0), lease.at - now)
        else:
            log.info("%s: issued (%s; next %s in %.0fs)", unit.describe(),
                     "lease" if fetched.lease_id else "expiring", lease.action, lease.at - now)
        return lease

    def renewed(self, unit: Unit, fetched: Fetched, now: float, wall: float) -> Lease:
        assert unit.lease is not None
        lease, short = lifetimes.renewed(unit.lease, fetched, now, wall)
        LEASE_RENEWALS.labels(outcome="short" if short else "ok").inc()
        self.dirty = True
        if short:
            log.info("%s: renewal gave %.0fs of %.0fs asked (max_ttl): issuing anew in %.0fs", unit.describe(),
                     fetched.lease_seconds or 0, lease.asked_seconds or 0, lease.at - now)
        return lease

    def publish(self, unit: Unit, now: float) -> None:
        """The unit's expiry, as an epoch of this process's clock, on the expiry gauge."""
        if unit.lease is not None and unit.lease.ends is not None:
            expires = time.time() + (unit.lease.ends - now)
            for name in unit.entries:
                LEASE_EXPIRY.labels(secret=name).set(expires)

    def retry(self, unit: Unit, delay: float, now: float) -> tuple[Lease | None, float]:
        """Back off within the time the lease has left, and say loudly when it will lapse."""
        lease = unit.lease
        if lease is None or lease.ends is None:
            return lease, delay
        if lease.action == "renew":
            LEASE_RENEWALS.labels(outcome="failed").inc()
        else:
            LEASE_ISSUES.labels(reason="reissue", outcome="failed").inc()
        lease, delay = lifetimes.retry(lease, delay, now)
        left = lease.left(now) or 0.0
        if left <= 0:
            log.error("%s: the lease has lapsed; the files keep the expired value until a new issue works",
                      unit.describe())
        elif left < 4 * delay or left < 0.2 * max(1.0, (lease.ends or now) - lease.issued):
            log.error("%s: the lease lapses in %.0fs; retrying", unit.describe(), left)
        return lease, delay

    def save(self, units: Iterable[Unit], *, force: bool = False) -> None:
        """Write the store when a lease changed (before the commit of its files: a crash between the
        two resumes the new lease); remove it when no lease is left."""
        if not (self.dirty or force):
            return
        now, wall = time.monotonic(), time.time()
        kept = {unit_key(u, _origin(self.providers[u.provider])): StoredLease.of(u.fetched, u.lease, now, wall)
                for u in units if u.lease is not None and u.fetched is not None}
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

    def revoke(self, units: Iterable[Unit], *, only: Callable[[Unit], bool] | None = None) -> list[Unit]:
        """Revoke the leases of providers with `revoke_on_exit` (or those `only` picks); returns the
        units whose lease is revoked."""
        revoked = []
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
                revoked.append(unit)
        return revoked


def _origin(provider: Provider) -> str | None:
    leases = leases_of(provider)
    return leases.origin() if leases is not None else None
