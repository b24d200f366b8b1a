"""Any Vault path as a fetch unit (a read, or a write with params) and the lease operations.

A response whose `lease_id` is set is a leased value (database, AWS, ... credentials): its lease
can be renewed, looked up and revoked. A PKI issue carries `expiration` and usually no lease. The
version of a leased or issued value changes with every issue: the certificate's serial number, or
a short digest of the lease id. A lease id never reaches a log, a message or a version: with a
token allowed `sys/leases/*` it would let anyone revoke the application's credentials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Any

from bridge import certificates
from bridge.errors import ProviderError, SecretNotFound
from bridge.provider import Fetched, Request
from providers.vault_auth import TokenLife
from providers.vault_client import VaultClient


def encode(data: Any) -> bytes:
    """A map as compact JSON with sorted keys (the same for KV and any other engine)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def lease_tag(lease_id: str) -> str:
    """A short stand-in for a lease id: changes with every issue, reveals nothing."""
    return "lease-" + hashlib.sha256(lease_id.encode()).hexdigest()[:12]


def fetch_path(client: VaultClient, request: Request) -> Fetched:
    """`GET /v1/<ref>`, or with params `POST /v1/<ref>` (as `vault write` does)."""
    if request.version is not None:
        raise SecretNotFound("`version` applies to KV v2 secrets only; remove it")
    url = "/v1/" + request.ref.strip("/")
    started = time.time()
    if request.params is None:
        response = client.call("read", request, lambda: _data(client.hvac.adapter.get(url)))
    else:
        body = request.params_dict()
        response = client.call("write", request, lambda: _data(client.hvac.adapter.post(url, json=body)))
    return _fetched(response, started, client.server_time())


def renew(client: VaultClient, fetched: Fetched, increment_seconds: float | None) -> Fetched:
    """`PUT sys/leases/renew`: the same value and version with the newly granted TTL.

    Vault grants at most what is left to the lease's max_ttl; the caller compares the granted
    `lease_seconds` with what it asked. A lease that is gone or not renewable is SecretNotFound."""
    lease_id = fetched.lease_id
    if not lease_id:
        raise SecretNotFound("not a leased value: nothing to renew")
    body: dict[str, Any] = {"lease_id": lease_id}
    if increment_seconds is not None:
        body["increment"] = max(1, math.ceil(increment_seconds))
    started = time.time()
    response = _lease_call(client, "renew", lease_id, "/v1/sys/leases/renew", body)
    seconds = float(response.get("lease_duration") or 0)
    return dataclasses.replace(fetched, lease_seconds=seconds, renewable=bool(response.get("renewable")),
                               obtained_at=started, expires_at=started + seconds)


def within_token_life(fetched: Fetched, life: TokenLife | None) -> Fetched:
    """`fetched` with its expiry no later than the end of the token that minted it: Vault revokes
    a token's leases when the token ends, whatever their own TTL. `lease_seconds` stays Vault's
    grant, so `expires_at < obtained_at + lease_seconds` says the token's end is the limit."""
    end = None if life is None else life.ends_at
    if end is None or fetched.lease_id is None or fetched.expires_at is None or fetched.expires_at <= end:
        return fetched
    return dataclasses.replace(fetched, expires_at=end)


def token_limited(fetched: Fetched) -> TokenLife | None:
    """The end of the minting token as `fetched` records it (a lease resumed from an earlier
    process, whose token this process does not know), or None when its own TTL was the limit."""
    if fetched.expires_at is None or fetched.obtained_at is None or fetched.lease_seconds is None:
        return None
    if fetched.expires_at < fetched.obtained_at + fetched.lease_seconds - 1:
        return TokenLife(fetched.expires_at)
    return None


def revoke(client: VaultClient, lease_id: str) -> None:
    """`PUT sys/leases/revoke`: the credentials stop working now."""
    _lease_call(client, "revoke", lease_id, "/v1/sys/leases/revoke", {"lease_id": lease_id})


def lease_alive(client: VaultClient, lease_id: str) -> float | None:
    """`PUT sys/leases/lookup`: the seconds the lease has left, or None when it is gone or expired."""
    try:
        response = _lease_call(client, "lease_lookup", lease_id, "/v1/sys/leases/lookup", {"lease_id": lease_id})
    except SecretNotFound:
        return None  # Vault answers 400 "invalid lease" for a revoked or expired lease
    ttl = float((response.get("data") or {}).get("ttl") or 0)
    return ttl if ttl > 0 else None


def _lease_call(client: VaultClient, operation: str, lease_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    # Errors name the lease's path (`database/creds/app`), which is what the config says, never the id.
    where = Request(lease_id.rsplit("/", 1)[0] if "/" in lease_id else "lease")
    try:
        return client.call(operation, where, lambda: _body(client.hvac.adapter.put(url, json=body)))
    except ProviderError as exc:
        if lease_id in exc.message:
            exc.message = exc.message.replace(lease_id, "<lease>")
            exc.args = (str(exc),)
        raise


def _body(response: Any) -> dict[str, Any]:
    """hvac returns a dict for a JSON answer and the Response for an empty one (204)."""
    return response if isinstance(response, dict) else {}


def _data(response: Any) -> dict[str, Any]:
    body = _body(response)
    if not isinstance(body.get("data"), dict):
        raise SecretNotFound("the response holds no data")
    return body


def _fetched(response: dict[str, Any], started: float, server_now: float | None = None) -> Fetched:
    """The value and its timing as durations from `started` (this machine's clock when the request
    went out): a lease's `lease_duration`, and for a certificate the seconds its `expiration` is
    from the server's own `Date` (less a second: `Date` is truncated), never longer than the
    certificate's own validity. This machine's clock is never compared with Vault's."""
    data: dict[str, Any] = response["data"]
    lease_id = response.get("lease_id") or None
    expires_at: float | None = None
    lease_seconds: float | None = None
    version: str | None = None
    if lease_id:
        lease_seconds = float(response.get("lease_duration") or 0)
        expires_at = started + lease_seconds if lease_seconds > 0 else None
        version = lease_tag(lease_id)
    expiration = data.get("expiration")
    if isinstance(expiration, int | float) and expiration > 0:  # a PKI certificate's notAfter
        ends = started + _certificate_seconds(data, float(expiration), server_now, started)
        expires_at = ends if expires_at is None else min(expires_at, ends)
    if isinstance(data.get("serial_number"), str):
        version = data["serial_number"]
    return Fetched(encode(data), version, expires_at=expires_at,
                   lease_id=lease_id, lease_seconds=lease_seconds,
                   renewable=bool(lease_id and response.get("renewable")),
                   obtained_at=started if (lease_id or expires_at is not None) else None)


def _certificate_seconds(data: dict[str, Any], expiration: float, server_now: float | None,
                         started: float) -> float:
    """How long an issued certificate has left, as a duration: by the server's clock, bounded by the
    certificate's own notBefore..notAfter (this machine's clock only when the server says neither)."""
    left: float | None = None if server_now is None else max(0.0, expiration - server_now - 1.0)
    cert = data.get("certificate")
    validity = certificates.validity(cert.encode()) if isinstance(cert, str) else None
    if validity is not None:
        span = max(0.0, validity[1] - validity[0])
        left = span if left is None else min(left, span)
    return max(0.0, expiration - started) if left is None else left
