"""The one interface every backend implements, the rules every backend shares, and how backends are found.

A provider fetches a reference (at its pin, or the latest) and returns bytes plus the resolved
version id; it answers a cheap "current version" question; it closes. It never writes files,
never logs a value, and raises only `ProviderError` subclasses (translated from its SDK in one
place).

The seam, said plainly:
- **the engine calls** `fetch_many`, `resolve_versions`, `moves`, `maintain`, `close`, and for
  leased values `renew`, `revoke`, `lease_alive`, `origin`; it reads `supports_previous` at config time;
- **a provider implements** `fetch`, and optionally `current_version`, `fetch_many`,
  `current_versions`, `resolve_versions`, `resolve_pin`, `moves`, `maintain`, `close`, and the
  four lease methods. The defaults are correct, merely not cheap.

The rules a provider must not hand-copy live here, once: the batch rule (`each`,
`each_concurrently`: stop calling after Unavailable, the items not tried get a copy), the counted
SDK call (`call`), `Retry-After` parsing (`retry_after_seconds`), and "permission refused: fall
back, re-probe later" (`Fallback`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from bridge.errors import ConfigError, ProviderError, Unavailable
from bridge.observe.metrics import PROVIDER_REQUESTS

ENTRY_POINT_GROUP = "secrets_bridge.providers"
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

log = logging.getLogger("secrets_bridge.provider")

#: the pip extra that brings each built-in provider's SDK
_EXTRAS = {"vault": "vault", "aws-secretsmanager": "aws", "azure-keyvault": "azure"}
#: the built-in providers' entry points (as pyproject.toml registers them; a test keeps the two
#: equal), found without reading every installed package's metadata (~40 ms at start-up)
BUILT_IN = {
    "vault": "providers.vault:VaultProvider",
    "file": "providers.local:FileProvider",
    "env": "providers.local:EnvProvider",
    "aws-secretsmanager": "providers.aws_secretsmanager:SecretsManagerProvider",
    "azure-keyvault": "providers.azure_keyvault:KeyVaultProvider",
}

#: `version: previous`, the uniform relative pin (SPEC): the version before the current one
PREVIOUS = "previous"
#: the longest `Retry-After` honoured: a server cannot park a secret for days, or forever
RETRY_AFTER_CAP_SECONDS = 3600.0
#: how long a refused cheaper call stays refused before it is tried again
REPROBE_SECONDS = 600.0


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
    """Base class of a backend. Subclasses set `Settings` and implement `fetch`; see the module
    docstring for which methods the engine calls and which a provider may override."""

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    #: whether `version: previous` means something here; the config refuses it where it does not
    supports_previous: ClassVar[bool] = False

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- implemented by every provider ------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        """Fetch one value; raise a `ProviderError` subclass."""
        raise NotImplementedError

    # -- optional, with correct defaults -----------------------------------------------------

    def current_version(self, ref: str) -> str | None:
        """The latest version id of `ref`, as cheaply as the backend allows.

        None means the backend cannot tell without a fetch (the engine then fetches and
        compares content)."""
        return self.fetch(Request(ref)).version

    def current_versions(self, refs: Sequence[str]) -> dict[str, VersionOutcome]:
        """The cheap change check for several refs; stops calling once the backend is unavailable."""
        return self.each([(ref, Request(ref)) for ref in refs], lambda r: self.current_version(r.ref))

    def resolve_pin(self, request: Request) -> str | None:
        """The version id a pinned `request` points at now. A provider whose pins can move
        (`moves`) answers this cheaply if it can; the default fetches."""
        return self.fetch(request).version

    def moves(self, version: str) -> bool:
        """Whether a pinned `version` names a pointer that can move to another version (an AWS
        staging label, `previous`), so the engine keeps checking it. Version ids never move."""
        return False

    # -- called by the engine ----------------------------------------------------------------

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Fetch several values; an error for one item does not fail the others, but once the
        backend is unavailable the rest are not tried (each would wait out its own timeout)."""
        return self.each([(r, r) for r in requests], self.fetch)

    def resolve_versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The engine's change check: the version id each request points at now (the latest for
        an unpinned request, the target of a moving pin). Defaults to `current_versions` for the
        unpinned and `resolve_pin` for the pinned, under one batch rule."""
        unique = list(dict.fromkeys(requests))
        latest = self.current_versions([r.ref for r in unique if r.version is None])
        down = first_unavailable(latest.values())
        pinned = self.each([(r, r) for r in unique if r.version is not None], self.resolve_pin, down=down)
        return {r: latest[r.ref] if r.version is None else pinned[r] for r in unique}

    def maintain(self) -> float | None:
        """Called between cycles: keep credentials alive (renew a token before it expires) so a
        long refresh interval never lets them lapse. Returns the seconds until it has work to do
        again, None when that is never (the engine does not wake for it). Default: nothing."""
        return None

    def close(self) -> None:
        """Release connections and background work."""

    # -- leased values (the engine calls these only for a Fetched with a lease_id) ---------------

    def renew(self, fetched: Fetched, increment_seconds: float | None) -> Fetched:
        """Renew a leased value's lease: the same value with the granted timing (lease_seconds,
        expires_at, obtained_at). Raise a ProviderError when it cannot be renewed; the engine then
        issues a new value. Only providers whose `fetch` returns a lease_id implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def revoke(self, lease_id: str) -> None:
        """Revoke a lease (revoke_on_exit)."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def lease_alive(self, lease_id: str) -> float | None:
        """Seconds a lease kept across a restart has left, or None when it is gone, so the engine
        resumes it instead of minting a new one."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def origin(self) -> str | None:
        """Where this provider's leases come from (a Vault address and namespace), kept with each
        stored lease so one from another server is never resumed. Never a credential."""
        return None

    # -- the shared rules, for providers to use --------------------------------------------------

    def count(self, operation: str, outcome: str) -> None:
        """Count one backend API call by operation and outcome (ok or an error code)."""
        PROVIDER_REQUESTS.labels(provider=self.name, operation=operation, outcome=outcome).inc()

    def call(self, operation: str, fn: Callable[[], T], *, translate: Callable[[Exception], ProviderError],
             ref: str = "", version: str | None = None) -> T:
        """One counted backend call: `fn()`, counted by `operation` and outcome. A ProviderError
        passes through; any other exception leaves through `translate` (the provider's one
        translation point) without its SDK exception chained. Both name this provider, ref and
        version."""
        try:
            result = fn()
        except ProviderError as exc:
            error = exc.at(provider=self.name, ref=ref, version=version)
        except Exception as exc:
            error = translate(exc).at(provider=self.name, ref=ref, version=version)
        else:
            self.count(operation, "ok")
            return result
        self.count(operation, error.code)
        raise error from None

    def each(self, items: Sequence[tuple[K, Request]], call: Callable[[Request], V], *,
             down: ProviderError | None = None) -> dict[K, V | ProviderError]:
        """The batch rule, serially: call once per distinct key; a ProviderError is that item's
        outcome; after an Unavailable (or from the start, given `down`) the remaining items get a
        copy of it without calling the backend."""
        out: dict[K, V | ProviderError] = {}
        for key, request in dict(items).items():
            if down is not None:
                out[key] = copy_error(down, provider=self.name, ref=request.ref, version=request.version)
                continue
            try:
                out[key] = call(request)
            except ProviderError as exc:
                out[key] = exc.at(provider=self.name, ref=request.ref, version=request.version)
                down = exc if isinstance(exc, Unavailable) else None
        return out

    #: the name `each` had before it was public; kept until every provider says `each`

    def each_concurrently(self, items: Sequence[tuple[K, Request]], call: Callable[[Request], V], *,
                          workers: int = 8, down: ProviderError | None = None) -> dict[K, V | ProviderError]:
        """The batch rule on a small bounded pool, for backends with no batch API. The first item
        runs alone (it warms the connection and the credential, and an unreachable backend costs
        one timeout); the rest run on up to `workers` threads. Once an item is Unavailable, the
        items not yet started get a copy of it instead of a call."""
        unique = dict(items)
        if workers <= 1 or len(unique) <= 2 or down is not None:
            return self.each(items, call, down=down)
        keys = list(unique)
        out = self.each([(keys[0], unique[keys[0]])], call)
        lock = threading.Lock()
        stopped = first_unavailable(out.values())

        def one(key: K) -> V | ProviderError:
            nonlocal stopped
            request = unique[key]
            with lock:
                seen = stopped
            if seen is not None:
                return copy_error(seen, provider=self.name, ref=request.ref, version=request.version)
            try:
                return call(request)
            except ProviderError as exc:
                error = exc.at(provider=self.name, ref=request.ref, version=request.version)
                if isinstance(error, Unavailable):
                    with lock:
                        stopped = stopped or error
                return error

        from concurrent.futures import ThreadPoolExecutor

        rest = keys[1:]
        with ThreadPoolExecutor(max_workers=min(workers, len(rest)),
                                thread_name_prefix=f"secrets-bridge-{self.name}") as pool:
            out.update(zip(rest, pool.map(one, rest), strict=True))
        return out


def copy_error(exc: ProviderError, *, provider: str, ref: str, version: str | None) -> ProviderError:
    """The same failure (class, message, retry_after) for another item that was not attempted."""
    return type(exc)(exc.message, provider=provider, ref=ref, version=version, retry_after=exc.retry_after)


def first_unavailable(outcomes: Iterable[object]) -> Unavailable | None:
    """The first Unavailable among batch outcomes, if any."""
    return next((o for o in outcomes if isinstance(o, Unavailable)), None)


def retry_after_seconds(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait from a response's headers, or None when the server named no wait.

    Reads `retry-after-ms` and `x-ms-retry-after-ms` (milliseconds, Azure) before `Retry-After`
    (delta-seconds or an HTTP-date, RFC 9110). Header names are case-insensitive. A negative wait
    is 0; a wait past RETRY_AFTER_CAP_SECONDS is capped; anything unparsable, infinite or NaN is
    ignored."""
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is not None:
            seconds = parse_retry_after(str(value), scale=scale, dates=scale == 1.0)
            if seconds is not None:
                return seconds
    return None


def parse_retry_after(value: str, *, scale: float = 1.0, dates: bool = True) -> float | None:
    """One Retry-After value in seconds: a number times `scale`, or (if `dates`) an HTTP-date."""
    text = value.strip()
    try:
        seconds = float(text) * scale
    except ValueError:
        if not dates:
            return None
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP_SECONDS)


class Fallback:
    """"Permission refused: fall back, re-probe later", for a cheaper call an identity may be
    refused (AWS ListSecrets or BatchGetSecretValue, Key Vault's list, Vault's metadata read).

    `allowed()` says whether to try the cheaper call now: always, until it is refused; after a
    refusal, again once `reprobe_seconds` have passed. `refused(exc)` records a refusal and logs
    it once (at WARNING, with `instead`: what the provider does meanwhile); `worked()` records a
    success, logging once if the call had been refused. Thread-safe."""

    def __init__(self, provider: str, operation: str, *, instead: str,
                 reprobe_seconds: float = REPROBE_SECONDS, logger: logging.Logger | None = None) -> None:
        self.provider = provider
        self.operation = operation
        self.instead = instead
        self.reprobe_seconds = reprobe_seconds
        self._log = logger or log
        self._refused_at: float | None = None
        self._warned = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "refused" if self._refused_at is not None else "allowed"
        return f"<Fallback {self.provider}:{self.operation} {state}>"

    @property
    def refused_now(self) -> bool:
        """Whether the last attempt was refused (and not yet shown to work again)."""
        return self._refused_at is not None

    def allowed(self) -> bool:
        with self._lock:
            at = self._refused_at
        return at is None or time.monotonic() - at >= self.reprobe_seconds

    def refused(self, exc: ProviderError) -> None:
        with self._lock:
            self._refused_at = time.monotonic()
            first, self._warned = not self._warned, True
        if first:
            self._log.warning("%s: %s refused (%s: %s); %s; trying %s again every %ds",
                              self.provider, self.operation, exc.code, exc.message, self.instead,
                              self.operation, round(self.reprobe_seconds))
        else:
            self._log.debug("%s: %s still refused (%s)", self.provider, self.operation, exc.code)

    def worked(self) -> None:
        with self._lock:
            was, self._refused_at = self._refused_at, None
            if was is not None:
                self._warned = False
        if was is not None:
            self._log.info("%s: %s allowed again; using it", self.provider, self.operation)


def provider_class(type_name: str) -> type[Provider]:
    """Import the provider registered under `type_name`, and only that one. A built-in name is
    ours; any other is looked up in the entry-point group."""
    target = BUILT_IN.get(type_name)
    if target is None:
        from importlib.metadata import entry_points

        found = entry_points(group=ENTRY_POINT_GROUP, name=type_name)
        if not found:
            known = sorted({*BUILT_IN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
            raise ConfigError(f"unknown provider type {type_name!r} (known: {', '.join(known)})")
        entry = next(iter(found))
        target = f"{entry.module}:{entry.attr}"
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(type_name)
        hint = f"pip install 'secrets-bridge[{extra}]'" if extra else "install its package"
        raise ConfigError(
            f"provider type {type_name!r} needs the missing module {exc.name!r}: {hint}"
        ) from None
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"entry point {type_name!r} is not a secrets-bridge Provider")
    return cls
