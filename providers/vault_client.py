"""The one path every Vault/OpenBao request takes: a live token, counting, and error translation.

hvac's exceptions carry no response headers, so a response hook on the requests session keeps the
last throttling answer's `Retry-After` (per thread) and `_translate` puts it in
`Unavailable.retry_after`. The session never retries: the engine is the one place that does.
Messages carry Vault's own error text (never a value) and never a token or a lease id.

The environment's proxy and CA bundle settings are read once, for the one address: requests would
otherwise walk every environment variable twice per request (a quarter of a KV read's CPU).

requests is loaded without a character-set detector (`_load_requests`): it would load
charset_normalizer, 2.7 MiB resident, for `Response.apparent_encoding` alone, which only decodes a
body that is not JSON and names no charset. hvac reads that text for an error that is not JSON,
and `translate` does not use it; requests then decodes it as UTF-8, as it documents.
"""

from __future__ import annotations

import email.utils
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import Request
from bridge.provider_rules import ErrorMap, retry_after_seconds
from providers.vault_auth import AuthConfig, TokenAuth, TokenKeeper

#: what requests loads, when it can, only for `Response.apparent_encoding`
_DETECTORS = ("charset_normalizer", "chardet")


def _load_requests() -> None:
    """Import requests (not loaded yet) with the detectors hidden, then let go of them, so another
    library can still import one. Without either, requests warns once and falls back to UTF-8."""
    if "requests" in sys.modules:
        return
    hidden = [name for name in _DETECTORS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it fails (importlib's rule)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")
            import requests  # noqa: F401
    except ModuleNotFoundError:
        pass  # not installed: reported below, with the extra's hint
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_load_requests()
try:
    import hvac
    import requests
    from hvac import exceptions as hvac_errors
except ModuleNotFoundError as exc:  # pragma: no cover - the config loader turns this into a hint
    raise ModuleNotFoundError("hvac is not installed", name=exc.name) from None

T = TypeVar("T")

#: Vault answers these statuses when it is throttling (429: rate limit quota) or sealed/standby (503)
_THROTTLED = (429, 503)
#: a Retry-After beyond this is not believed (a misconfigured proxy must not park a secret for days)


class VaultClient:
    """hvac's client with the bridge's session, token upkeep and call path."""

    def __init__(self, name: str, address: str | None, *, verify: bool | str, timeout: float,
                 namespace: str | None, auth: AuthConfig, count: Callable[[str, str], None]) -> None:
        self.name = name
        self._count = count
        self._auth = auth
        self._seen = threading.local()  # this thread's last status, and Retry-After when throttled
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=0)  # the engine is the one place that retries
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.hooks["response"].append(self._remember_retry_after)
        # What trust_env would look up on every request, once: HTTP(S)_PROXY unless NO_PROXY
        # names the address, and REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when no ca_cert is given.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(address or "")
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify = verify  # hvac takes a session's own verify over its argument
        self.hvac = hvac.Client(url=address, verify=verify, timeout=timeout, namespace=namespace, session=session)
        self.tokens = TokenKeeper(self.hvac, auth)

    def close(self) -> None:
        self.hvac.adapter.close()

    def call(self, operation: str, request: Request, call: Callable[[], T]) -> T:
        """One Vault request with a live token; logs in again once if the token was refused."""
        for attempt in (1, 2):
            self._seen.retry_after, self._seen.status = None, None
            token = None
            try:
                self.tokens.ensure()
                token = self.tokens.token()
                result = call()
                self._count(operation, "ok")
                return result
            except ProviderError as exc:
                if isinstance(exc, Unavailable) and exc.retry_after is None:
                    exc.retry_after = self._retry_after()
                self._count(operation, exc.code)
                raise exc.at(provider=self.name, ref=request.ref, version=request.version) from None
            except (hvac_errors.VaultError, requests.RequestException) as exc:
                error = translate(exc, self._retry_after(), getattr(self._seen, "status", None))
                error = error.at(provider=self.name, ref=request.ref, version=request.version)
                self._count(operation, error.code)
                if attempt == 1 and isinstance(error, AccessDenied) and not isinstance(self._auth, TokenAuth):
                    self.tokens.invalidate(refused=token)
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def _remember_retry_after(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._seen.status = response.status_code
        self._seen.date = response.headers.get("Date")
        if response.status_code in _THROTTLED:
            self._seen.retry_after = retry_after_seconds(response.headers)

    def _retry_after(self) -> float | None:
        return getattr(self._seen, "retry_after", None)

    def server_time(self) -> float | None:
        """The server's clock (epoch seconds, to the second) as its last answer on this thread gave
        it in `Date`, None when it gave none: a time Vault states (a certificate's `expiration`) is
        measured against it, never against this machine's clock."""
        date = getattr(self._seen, "date", None)
        if not isinstance(date, str):
            return None
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None


def one_line(text: str) -> str:
    """Vault wraps errors as "1 error occurred:\n\t* permission denied\n\n": keep the reason."""
    text = re.sub(r"^\d+ errors? occurred:\s*", "", text.strip())
    return " ".join(text.replace("* ", "").split())


def _reason(exc: hvac_errors.VaultError) -> str:
    return one_line(", ".join(str(e) for e in (exc.errors or []))) or type(exc).__name__


def _unsupported(exc: hvac_errors.VaultError) -> ProviderError:
    return SecretNotFound(f"{_reason(exc)}: without `params` a path is read, with `params` written")


#: hvac's and requests' exceptions, first match wins (a subclass before its base)
_ERRORS = ErrorMap([
    (hvac_errors.InvalidPath, lambda e: SecretNotFound(f"not found ({_reason(e)})" if e.errors else "not found")),
    ((hvac_errors.Forbidden, hvac_errors.Unauthorized), lambda e: AccessDenied(_reason(e))),
    (hvac_errors.InvalidRequest, lambda e: SecretNotFound(f"bad request: {_reason(e)}")),
    (hvac_errors.UnsupportedOperation, _unsupported),
    (hvac_errors.RateLimitExceeded, lambda e: Unavailable(f"throttled: {_reason(e)}")),
    (hvac_errors.VaultError, lambda e: Unavailable(f"server error: {_reason(e)}")),
    (requests.Timeout, lambda e: Unavailable("timed out")),
    (requests.exceptions.SSLError, lambda e: Unavailable("TLS error (check ca_cert)")),
    (requests.ConnectionError, lambda e: Unavailable("cannot connect")),
])


def translate(exc: Exception, retry_after: float | None = None, status: int | None = None) -> ProviderError:
    """The one place hvac and transport errors become the bridge's taxonomy (the table above);
    hvac maps a 405 to no class of its own (an UnexpectedError), so the status tells it."""
    error = _ERRORS(exc)
    if status == 405 and isinstance(exc, hvac_errors.VaultError) and isinstance(error, Unavailable):
        return _unsupported(exc)
    if isinstance(error, Unavailable) and error.retry_after is None:
        error.retry_after = retry_after
    return error
