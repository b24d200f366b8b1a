"""The one interface every backend implements, and how backends are found.

A provider fetches a reference (at its pin, or the latest) and returns bytes plus the resolved
version id; it answers a cheap "current version" question; it closes. It never writes files,
never logs a value, and raises only `ProviderError` subclasses (translated from its SDK in one
place). Batch methods exist so a backend with batch APIs (AWS) can serve many secrets per call;
the defaults loop over the single-item methods.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from bridge.errors import ConfigError, ProviderError, Unavailable
from bridge.metrics import PROVIDER_REQUESTS

ENTRY_POINT_GROUP = "secrets_bridge.providers"
K = TypeVar("K")
V = TypeVar("V")

#: the pip extra that brings each built-in provider's SDK
_EXTRAS = {"vault": "vault", "aws-secretsmanager": "aws", "azure-keyvault": "azure"}


@dataclass(frozen=True)
class Request:
    """What to fetch: a provider-native ref, at a pinned version or (None) the latest.

    `params` are write parameters (Vault's `vault write` fields: `pki/issue/<role>` takes a
    common_name) as canonical JSON text, so a Request stays hashable and two entries naming the
    same (ref, version, params) are one fetch unit."""

    ref: str
    version: str | None = None
    params: str | None = None

    def __post_init__(self) -> None:
        # Requests key dicts in every cycle (10,000 per check at scale): hash once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.ref, self.version, self.params)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def canonical_params(params: Mapping[str, Any] | None) -> str | None:
        return None if params is None else json.dumps(params, sort_keys=True, separators=(",", ":"))

    def params_dict(self) -> dict[str, Any]:
        return {} if self.params is None else dict(json.loads(self.params))


@dataclass(frozen=True)
class Fetched:
    """One fetched value. The value is never part of the repr."""

    value: bytes = field(repr=False)
    #: the resolved version id, the unit of change; None when the backend has no versions
    version: str | None
    content_type: str | None = None
    #: when the value stops being valid (lease end, certificate expiry, secret expiry), epoch seconds
    expires_at: float | None = None
    #: a leased value (Vault dynamic secrets): the lease to renew, look up or revoke
    lease_id: str | None = field(default=None, repr=False)
    #: the lease's TTL as granted with this value, seconds
    lease_seconds: float | None = None
    renewable: bool = False
    #: when the value (or its last renewal) was obtained, epoch seconds
    obtained_at: float | None = None


#: what a batch call returns per item
Outcome = Fetched | ProviderError
VersionOutcome = str | None | ProviderError


class ProviderSettings(BaseModel):
    """Base of each provider's own config model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


class Provider:
    """Base class of a backend. Subclasses set `Settings` and implement `fetch`."""

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def fetch(self, request: Request) -> Fetched:
        """Fetch one value; raise a `ProviderError` subclass."""
        raise NotImplementedError

    def current_version(self, ref: str) -> str | None:
        """The latest version id of `ref`, as cheaply as the backend allows.

        None means the backend cannot tell without a fetch (the engine then fetches and
        compares content)."""
        return self.fetch(Request(ref)).version

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Fetch several values; an error for one item does not fail the others, but once the
        backend is unavailable the rest are not tried (each would wait out its own timeout)."""
        return self._each([(r, r) for r in requests], self.fetch)

    def current_versions(self, refs: Sequence[str]) -> dict[str, VersionOutcome]:
        """The cheap change check for several refs; stops calling once the backend is unavailable."""
        return self._each([(ref, Request(ref)) for ref in refs], lambda r: self.current_version(r.ref))

    def _each(self, items: Sequence[tuple[K, Request]], call: Callable[[Request], V]) -> dict[K, V | ProviderError]:
        """Call once per distinct item; a ProviderError is that item's outcome; after an
        Unavailable the remaining items get a copy of it without calling the backend."""
        out: dict[K, V | ProviderError] = {}
        down: Unavailable | None = None
        for key, request in dict(items).items():
            try:
                if down is not None:
                    raise Unavailable(down.message, retry_after=down.retry_after)
                out[key] = call(request)
            except ProviderError as exc:
                out[key] = exc.at(provider=self.name, ref=request.ref, version=request.version)
                down = exc if isinstance(exc, Unavailable) else down
        return out

    def moves(self, version: str) -> bool:
        """Whether a pinned `version` names a pointer that can move to another version (an AWS
        staging label), so the engine keeps checking it. Version ids and numbers never move."""
        return False

    def resolve_versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The engine's change check: the version id each request points at now (the latest for
        an unpinned request, the target of a moving pin). Defaults to `current_versions` for the
        unpinned and a fetch for moving pins; a backend that can answer both cheaply overrides it."""
        unique = list(dict.fromkeys(requests))
        latest = self.current_versions([r.ref for r in unique if r.version is None])
        moving = self._each([(r, r) for r in unique if r.version is not None], lambda r: self.fetch(r).version)
        return {r: latest[r.ref] if r.version is None else moving[r] for r in unique}

    def maintain(self) -> None:
        """Called every few seconds between cycles: keep credentials alive (renew a token before
        it expires) so a long refresh interval never lets them lapse. Default: nothing."""

    def renew(self, fetched: Fetched, increment_seconds: float | None) -> Fetched:
        """Renew a leased value's lease; the same value with the granted timing."""
        raise NotImplementedError

    def revoke(self, lease_id: str) -> None:
        """Revoke a lease (revoke_on_exit)."""
        raise NotImplementedError

    def lease_alive(self, lease_id: str) -> float | None:
        """Seconds a lease has left, or None when it is gone."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and background work."""

    def count(self, operation: str, outcome: str) -> None:
        """Count one backend API call by operation and outcome (ok or an error code)."""
        PROVIDER_REQUESTS.labels(provider=self.name, operation=operation, outcome=outcome).inc()


def provider_class(type_name: str) -> type[Provider]:
    """Import the provider registered under `type_name`, and only that one."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=type_name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise ConfigError(f"unknown provider type {type_name!r} (known: {', '.join(known)})")
    (ep,) = tuple(found)[:1]
    try:
        module = importlib.import_module(ep.module)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(type_name)
        hint = f"pip install 'secrets-bridge[{extra}]'" if extra else "install its package"
        raise ConfigError(
            f"provider type {type_name!r} needs the missing module {exc.name!r}: {hint}"
        ) from None
    cls = getattr(module, ep.attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"entry point {type_name!r} is not a secrets-bridge Provider")
    return cls
