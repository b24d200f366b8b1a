"""The seam every backend implements, and how backends are found.

A provider fetches a reference (at its pin, or the latest) and returns bytes plus the resolved
version id; it tells which version each reference points at now; it closes. It never writes files,
never logs a value, and raises only `ProviderError` subclasses (translated from its SDK in one
place, a table: `bridge.provider_rules.ErrorMap`).

The seam, said plainly (what the engine calls; everything else is the provider's own business):

    fetch(request)          one value                                   required
    fetch_many(requests)    several values, under the batch rule       default: `fetch` each
    versions(requests)      the version id each request points at now  default: `fetch_many`'s
    moves(version)          whether a pinned version can move          default: never
    maintain()              keep credentials alive between cycles      default: nothing
    close()                 release connections                        default: nothing

and, declared as data on the class: `Settings` (its config model), `capabilities` (what it can
do: the config refuses what it cannot), `sdk_loggers` (kept quiet, even with --debug, as their debug
lines can carry request headers) and `credential_env` (the environment variables holding the
credentials it reads: never written by the `env` provider, never passed to an `exec` child).
A provider whose `capabilities.leases` is set also implements `Leases` (renew, revoke, look up).

The rules a provider must not hand-copy (the batch rule, the counted call, `Retry-After`,
"permission refused: fall back, re-probe later", one error fanned out to a batch, the error table)
are helpers in `bridge.provider_rules`. Providers are found through the entry-point group
`secrets_bridge.providers`; the built-in ones through the table the `providers` package declares,
which saves reading every installed package's metadata at start-up. This module names no provider.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from bridge.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from collections.abc import Iterator

ENTRY_POINT_GROUP = "secrets_bridge.providers"
#: the package whose `BUILT_IN` table maps type names to "module:Class" (and `EXTRAS` to pip extras)
BUILT_IN_PACKAGE = "providers"

#: `version: previous`, the uniform relative pin (SPEC): the version before the current one
PREVIOUS = "previous"


@dataclass(frozen=True, slots=True)
class Request:
    """What to fetch: a provider-native ref, at a pinned version or (None) the latest.

    `params` are write parameters (Vault's `vault write` fields: `pki/issue/<role>` takes a
    common_name) as canonical JSON text, so a Request stays hashable and two entries naming the
    same (ref, version, params) are one fetch unit."""

    ref: str
    version: str | None = None
    params: str | None = None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Requests key dicts in every cycle (10,000 per check at scale): hash once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.ref, self.version, self.params)))

    def __hash__(self) -> int:
        return self._hash

    @staticmethod
    def canonical_params(params: Mapping[str, Any] | None) -> str | None:
        return None if params is None else json.dumps(params, sort_keys=True, separators=(",", ":"))

    def params_dict(self) -> dict[str, Any]:
        return {} if self.params is None else dict(json.loads(self.params))


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do, declared on its class; the config refuses what it cannot."""

    #: `version: previous` means something (the version before the current one)
    previous: bool = False
    #: `params` are accepted (a write, as `vault write` does)
    params: bool = False
    #: fetched values may carry a lease; the class implements `Leases`
    leases: bool = False
    #: `versions()` is cheaper than fetching (a listing or metadata); without it the engine's
    #: change check is a fetch, compared by version id or content
    cheap_versions: bool = False


class ProviderSettings(BaseModel):
    """Base of each provider's own config model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


class Provider:
    """Base class of a backend: subclasses set `Settings` and implement `fetch`; see the module
    docstring for the rest of the seam."""

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: loggers of this provider's SDK, kept at WARNING even with --debug
    sdk_loggers: ClassVar[tuple[str, ...]] = ()
    #: environment variables holding credentials this provider reads
    credential_env: ClassVar[tuple[str, ...]] = ()

    #: every provider class imported in this process (the configured ones, and any a test made)
    loaded: ClassVar[list[type[Provider]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Provider.loaded.append(cls)

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def fetch(self, request: Request) -> Fetched:
        """Fetch one value; raise a `ProviderError` subclass."""
        raise NotImplementedError

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Fetch several values; an error for one item does not fail the others, but once the
        backend is unavailable the rest are not tried (each would wait out its own timeout)."""
        from bridge.provider_rules import each

        return each(self, [(r, r) for r in requests], self.fetch)

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The version id each request points at now: the latest for an unpinned request, the
        target of a moving pin. None means the backend cannot tell (the engine compares content).
        The default fetches, which is correct, merely not cheap."""
        fetched = self.fetch_many(requests)
        return {r: o if isinstance(o, ProviderError) else o.version for r, o in fetched.items()}

    def moves(self, version: str) -> bool:
        """Whether a pinned `version` names a pointer that can move to another version (an AWS
        staging label, `previous`), so the engine keeps checking it. Version ids never move."""
        return False

    def maintain(self) -> float | None:
        """Called between cycles: keep credentials alive (renew a token before it expires) so a
        long refresh interval never lets them lapse. Returns the seconds until it has work to do
        again, None when that is never."""
        return None

    def close(self) -> None:
        """Release connections and background work."""


@runtime_checkable
class Leases(Protocol):
    """What a provider with `capabilities.leases` implements; the engine calls these only for a
    `Fetched` with a `lease_id`."""

    #: revoke this provider's leases when the bridge shuts down (a setting of the instance)
    revoke_on_exit: bool

    def renew(self, fetched: Fetched, increment_seconds: float | None) -> Fetched:
        """The same value with the granted timing (lease_seconds, expires_at, obtained_at); a
        ProviderError when it cannot be renewed (the engine then issues a new value)."""
        ...

    def revoke(self, lease_id: str) -> None:
        """Revoke a lease now."""
        ...

    def lease_alive(self, lease_id: str) -> float | None:
        """Seconds a lease kept across a restart has left, or None when it is gone."""
        ...

    def origin(self) -> str | None:
        """Where the leases come from (an address and namespace), kept with each stored lease so
        one from another server is never resumed. Never a credential."""
        ...


def leases_of(provider: Provider) -> Leases | None:
    """The provider's lease operations, when it has leases."""
    return provider if provider.capabilities.leases and isinstance(provider, Leases) else None


def credential_variables() -> frozenset[str]:
    """Every environment variable a loaded provider reads credentials from."""
    return frozenset(name for cls in Provider.loaded for name in cls.credential_env)


def _built_in() -> tuple[Mapping[str, str], Mapping[str, str]]:
    try:
        package = importlib.import_module(BUILT_IN_PACKAGE)
    except ModuleNotFoundError:
        return {}, {}
    return getattr(package, "BUILT_IN", {}), getattr(package, "EXTRAS", {})


def _registered() -> Iterator[tuple[str, str]]:
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        yield entry.name, f"{entry.module}:{entry.attr}"


def provider_class(type_name: str) -> type[Provider]:
    """Import the provider registered under `type_name`, and only that one."""
    built_in, extras = _built_in()
    target = built_in.get(type_name) or dict(_registered()).get(type_name)
    if target is None:
        known = sorted({*built_in, *(name for name, _ in _registered())})
        raise ConfigError(f"unknown provider type {type_name!r} (known: {', '.join(known)})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = extras.get(type_name)
        hint = f"pip install 'secrets-bridge[{extra}]'" if extra else "install its package"
        raise ConfigError(f"provider type {type_name!r} needs the missing module {exc.name!r}: {hint}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"entry point {type_name!r} is not a secrets-bridge Provider")
    if cls.capabilities.leases and not all(callable(getattr(cls, m, None))
                                           for m in ("renew", "revoke", "lease_alive", "origin")):
        raise ConfigError(f"provider type {type_name!r} declares leases but does not implement them")
    for logger in cls.sdk_loggers:  # their debug lines can carry request headers, even with --debug
        logging.getLogger(logger).setLevel(logging.WARNING)
    return cls
