"""The error taxonomy. Code decides on the class, never on message text.

BridgeError
├── ConfigError             bad configuration: exit 2, one line naming the field
├── ProviderError           .provider .ref .version .code (a stable string, used as a metric label)
│   ├── SecretNotFound      permanent for this ref/version: keep the last good file
│   │   └── ExtractError    the value lacks the shape the config asks for (no such key, not JSON)
│   ├── AccessDenied        auth or permission: retry slowly
│   ├── Unavailable         timeout, 5xx, throttling (carries retry_after): back off
│   └── OwnerRefused        the file's uid/gid is one this process cannot give: that entry alone fails
└── WriteError              output directory unusable

Messages never carry a secret value, token or credential.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class BridgeError(Exception):
    """Base of every error the bridge reports to a user."""

    exit_status = 1


class ConfigError(BridgeError):
    """The configuration is invalid; the message names the field path."""

    exit_status = 2


class WriteError(BridgeError):
    """The output directory cannot be used."""


class ProviderError(BridgeError):
    """A provider could not deliver a secret. Subclasses set `code` and the retry policy."""

    code = "error"
    #: how much slower than the normal backoff this class retries
    backoff_factor = 1.0

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        ref: str = "",
        version: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.ref = ref
        self.version = version
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.ref + (f"@{self.version}" if self.version else "")
        prefix = ": ".join(p for p in (self.provider, where) if p)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def at(self, *, provider: str, ref: str, version: str | None = None) -> ProviderError:
        """Fill in where the error happened, if the raiser did not know."""
        self.provider = self.provider or provider
        self.ref = self.ref or ref
        self.version = self.version or version
        self.args = (str(self),)
        return self


class SecretNotFound(ProviderError):
    """The ref (or the pinned version) does not exist."""

    code = "not_found"
    backoff_factor = 4.0


class AccessDenied(ProviderError):
    """Authentication failed or the identity may not read the secret."""

    code = "access_denied"
    backoff_factor = 4.0


class Unavailable(ProviderError):
    """Timeout, connection failure, 5xx or throttling; `retry_after` is honoured."""

    code = "unavailable"


class ExtractError(SecretNotFound):
    """The value exists but does not have the shape the config asks for (not JSON, no such key,
    a template naming a missing key)."""

    code = "bad_value"


class OwnerRefused(ProviderError):
    """The entry asks for a file owner (`uid`, `gid`) this process may not give (not root, no
    CAP_CHOWN): that entry fails alone and keeps its last good file; the others are committed."""

    code = "owner_refused"
    backoff_factor = 4.0


def contained(provider: str, call: Callable[[], T]) -> T | ProviderError:
    """Run a provider call; an unexpected exception (a provider bug, an odd server answer) becomes
    an Unavailable for what it was serving, never the end of the bridge. Only its class is told:
    its text may come from an SDK."""
    try:
        return call()
    except ProviderError as exc:
        return exc
    except Exception as exc:
        logging.getLogger("secrets_bridge.engine").debug("provider %s raised", provider, exc_info=True)
        return Unavailable(f"internal error ({type(exc).__name__})", provider=provider)
