"""The rules every backend shares, written once, as helpers a provider uses (the engine never
calls these): the counted SDK call (`call`, `count`), the batch rule (`each`, `each_concurrently`:
stop calling after Unavailable, the items not tried get a copy), one error fanned out to a batch
(`fan_out`), `Retry-After` parsing (`retry_after_seconds`), "permission refused: fall back,
re-probe later" (`Fallback`), the table that translates an SDK's exceptions (`ErrorMap`), and
reading a credential file (`read_credential`: bounded, never blocking on a FIFO).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from bridge.errors import AccessDenied, ProviderError, Unavailable
from bridge.observe.metrics import PROVIDER_REQUESTS


class Provider(Protocol):
    """What these helpers need of a provider: its name (they know nothing else of the seam)."""

    name: str


class Request(Protocol):
    """What they need of a request: what to name in a copied error."""

    @property
    def ref(self) -> str: ...

    @property
    def version(self) -> str | None: ...

K = TypeVar("K")
R = TypeVar("R", bound=Request)
V = TypeVar("V")
T = TypeVar("T")

log = logging.getLogger("secrets_bridge.provider")

#: the longest `Retry-After` honoured: a server cannot park a secret for days, or forever
RETRY_AFTER_CAP_SECONDS = 3600.0
#: how long a refused cheaper call stays refused before it is tried again
REPROBE_SECONDS = 600.0

#: how an exception becomes a core error: a ProviderError class (the exception's class name is the
#: message) or a function of the exception
Make = type[ProviderError] | Callable[[Any], ProviderError]


class ErrorMap:
    """httpx's `map_exceptions`, for one provider's SDK: rows of (exception classes, make), the
    first row whose classes match wins; `default` makes anything else (an Unavailable: an error
    nobody foresaw is retried, never taken as "gone"). Messages never carry a value or a token."""

    def __init__(self, rows: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], Make]],
                 default: Make = Unavailable) -> None:
        self.rows = list(rows)
        self.default = default

    def __call__(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        for types, make in self.rows:
            if isinstance(exc, types):
                return _made(make, exc)
        return _made(self.default, exc)


def _made(make: Make, exc: BaseException) -> ProviderError:
    if isinstance(make, type) and issubclass(make, ProviderError):
        return make(type(exc).__name__)
    made: ProviderError = make(exc)  # type: ignore[call-arg,assignment]
    return made


def count(provider: str, operation: str, outcome: str) -> None:
    """Count one backend API call by operation and outcome (ok or an error code)."""
    PROVIDER_REQUESTS.labels(provider=provider, operation=operation, outcome=outcome).inc()


def call(provider: str, operation: str, fn: Callable[[], T], *,
         translate: Callable[[Exception], ProviderError], ref: str = "", version: str | None = None) -> T:
    """One counted backend call: `fn()`, counted by `operation` and outcome. A ProviderError
    passes through; any other exception leaves through `translate` (the provider's one
    translation point) without its SDK exception chained. Both name the provider, ref and
    version."""
    try:
        result = fn()
    except ProviderError as exc:
        error = exc.at(provider=provider, ref=ref, version=version)
    except Exception as exc:
        error = translate(exc).at(provider=provider, ref=ref, version=version)
    else:
        count(provider, operation, "ok")
        return result
    count(provider, operation, error.code)
    raise error from None


def each(provider: Provider, items: Sequence[tuple[K, R]], fn: Callable[[R], V], *,
         down: ProviderError | None = None) -> dict[K, V | ProviderError]:
    """The batch rule, serially: call once per distinct key; a ProviderError is that item's
    outcome; after an Unavailable (or from the start, given `down`) the remaining items get a
    copy of it without calling the backend."""
    out: dict[K, V | ProviderError] = {}
    for key, request in dict(items).items():
        if down is not None:
            out[key] = copy_error(down, provider=provider.name, ref=request.ref, version=request.version)
            continue
        try:
            out[key] = fn(request)
        except ProviderError as exc:
            out[key] = exc.at(provider=provider.name, ref=request.ref, version=request.version)
            down = exc if isinstance(exc, Unavailable) else None
    return out


def each_concurrently(provider: Provider, items: Sequence[tuple[K, R]], fn: Callable[[R], V], *,
                      workers: int = 8, down: ProviderError | None = None) -> dict[K, V | ProviderError]:
    """The batch rule on a small bounded pool, for backends with no batch API. The first item
    runs alone (it warms the connection and the credential, and an unreachable backend costs
    one timeout); the rest run on up to `workers` threads. Once an item is Unavailable, the
    items not yet started get a copy of it instead of a call."""
    unique = dict(items)
    if workers <= 1 or len(unique) <= 2 or down is not None:
        return each(provider, items, fn, down=down)
    keys = list(unique)
    out = each(provider, [(keys[0], unique[keys[0]])], fn)
    lock = threading.Lock()
    stopped = first_unavailable(out.values())

    def one(key: K) -> V | ProviderError:
        nonlocal stopped
        request = unique[key]
        with lock:
            seen = stopped
        if seen is not None:
            return copy_error(seen, provider=provider.name, ref=request.ref, version=request.version)
        try:
            return fn(request)
        except ProviderError as exc:
            error = exc.at(provider=provider.name, ref=request.ref, version=request.version)
            if isinstance(error, Unavailable):
                with lock:
                    stopped = stopped or error
            return error

    from concurrent.futures import ThreadPoolExecutor

    rest = keys[1:]
    with ThreadPoolExecutor(max_workers=min(workers, len(rest)),
                            thread_name_prefix=f"secrets-bridge-{provider.name}") as pool:
        out.update(zip(rest, pool.map(one, rest), strict=True))
    return out


def fan_out(error: ProviderError, keys: Iterable[K], request_of: Callable[[K], Request], *,
            provider: str) -> dict[K, ProviderError]:
    """One failure of a batch call (a listing, a batch read) as each item's own error."""
    out: dict[K, ProviderError] = {}
    for key in keys:
        request = request_of(key)
        out[key] = copy_error(error, provider=provider, ref=request.ref, version=request.version)
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

    `allowed(holder)` says whether to try the cheaper call now: always, until it is refused; after a
    refusal, again once `reprobe_seconds` have passed, or at once for another `holder` (the
    credential that was refused, told apart by identity: a new token is asked afresh).
    `refused(exc, holder)` records a refusal and logs it once (at WARNING, with `instead`: what the
    provider does meanwhile); `worked()` records a success, logging once if the call had been refused.
    With `confirm`, a refusal is only suspected (the call is still tried) until `confirmed(holder)`:
    another call with the same credential worked, so the refusal was the policy's and not a revoked
    credential's. Thread-safe."""

    def __init__(self, provider: str, operation: str, *, instead: str,
                 reprobe_seconds: float = REPROBE_SECONDS, logger: logging.Logger | None = None,
                 confirm: bool = False) -> None:
        self.provider = provider
        self.operation = operation
        self.instead = instead
        self.reprobe_seconds = reprobe_seconds
        self.confirm = confirm
        self._log = logger or log
        self._refused_at: float | None = None
        self._refused_by: object = None
        self._suspected: tuple[object, ProviderError] | None = None
        self._warned = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "refused" if self._refused_at is not None else "allowed"
        return f"<Fallback {self.provider}:{self.operation} {state}>"

    @property
    def refused_now(self) -> bool:
        """Whether the last attempt was refused (and not yet shown to work again)."""
        return self._refused_at is not None

    def allowed(self, holder: object = None) -> bool:
        with self._lock:
            at, by = self._refused_at, self._refused_by
        return at is None or by is not holder or time.monotonic() - at >= self.reprobe_seconds

    def refused(self, exc: ProviderError, holder: object = None) -> None:
        with self._lock:
            if self.confirm and (self._refused_at is None or self._refused_by is not holder):
                self._refused_at, self._suspected = None, (holder, exc)
                first = False
            else:
                self._refused_at, self._refused_by = time.monotonic(), holder
                first, self._warned = not self._warned, True
        self._tell(exc, first)

    def confirmed(self, holder: object = None) -> None:
        """A refusal suspected for `holder` was the policy's (see `confirm`)."""
        with self._lock:
            suspected, self._suspected = self._suspected, None
            if suspected is None or suspected[0] is not holder:
                self._suspected = suspected
                return
            self._refused_at, self._refused_by = time.monotonic(), holder
            first, self._warned = not self._warned, True
        self._tell(suspected[1], first)

    def worked(self) -> None:
        with self._lock:
            was, self._refused_at, self._suspected = self._refused_at, None, None
            if was is not None:
                self._warned = False
        if was is not None:
            self._log.info("%s: %s allowed again; using it", self.provider, self.operation)

    def _tell(self, exc: ProviderError, first: bool) -> None:
        if first:
            self._log.warning("%s: %s refused (%s: %s); %s; trying %s again every %ds",
                              self.provider, self.operation, exc.code, exc.message, self.instead,
                              self.operation, round(self.reprobe_seconds))
        else:
            self._log.debug("%s: %s still refused (%s)", self.provider, self.operation, exc.code)


#: a token, JWT, role id or client secret is a few KiB; a larger file is not one
MAX_CREDENTIAL_BYTES = 64 * 2**10


def read_credential(path: os.PathLike[str] | str, what: str) -> str:
    """The stripped UTF-8 text of a credential file (`token_file`, `jwt_file`, ...), or AccessDenied
    naming `what` and the path: never blocks on a FIFO, never reads past MAX_CREDENTIAL_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AccessDenied(f"cannot read {what} {path}: not a regular file")
            data = file.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise AccessDenied(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise AccessDenied(f"cannot read {what} {path}: larger than {MAX_CREDENTIAL_BYTES >> 10} KiB")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AccessDenied(f"cannot read {what} {path}: not UTF-8 text") from None
