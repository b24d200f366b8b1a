"""How the Azure Key Vault provider's SDK and transport errors become the core's taxonomy: one
place, read as tables (an HTTP status table, and the identity endpoint's refusals). Messages carry
the status, the vault's error codes and a fixed reason, never a value or a token."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider_rules import retry_after_seconds

_AADSTS = re.compile(r"AADSTS\d+")
#: what a 403's innererror code means, in the operator's words
#: 403 reasons that mean "this identity may not do this" (as opposed to a disabled secret or a firewall)
_PERMISSION = {None, "AccessDenied", "ForbiddenByPolicy", "ForbiddenByRbac"}
_FORBIDDEN_REASONS = {
    "SecretDisabled": "the secret (or this version) is disabled",
    "AccessDenied": "the identity lacks the {permission} permission (access policy or RBAC role)",
    "ForbiddenByPolicy": "the identity lacks the {permission} permission (access policy)",
    "ForbiddenByRbac": "the identity lacks a Key Vault Secrets User role assignment",
    "ForbiddenByFirewall": "the vault's firewall refuses this client's address",
    "ForbiddenByConnection": "the vault refuses public access; use its private endpoint",
}


class PermissionRefused(AccessDenied):
    """The vault's 403 for an operation the identity lacks the permission for (not a disabled secret,
    not a firewall): the cue to fall back from listing to reading each secret."""


def translate(exc: Exception, *, vault_url: str, kind: str, permission: str = "secrets/get") -> ProviderError:
    """Every SDK and transport error, mapped to the core's taxonomy (the caller names the provider,
    ref and version). `kind` names the credential in use."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ProviderError):  # raised by our own credential setup
        return exc
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return Unavailable(f"cannot reach the vault or identity endpoint ({type(exc).__name__})")
    if isinstance(exc, ClientAuthenticationError) and not _from_vault(exc, vault_url):
        return _identity_error(exc, kind)
    if isinstance(exc, HttpResponseError):
        return _http_error(exc, permission)
    return Unavailable(f"unexpected {type(exc).__name__} from the Azure SDK")


def _identity_error(exc: Any, kind: str) -> ProviderError:
    """The identity endpoint refused, or did not answer (an outage, not a refusal)."""
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    if isinstance(exc.__cause__, (ServiceRequestError, ServiceResponseError)):
        return Unavailable(f"{kind} cannot reach the identity endpoint ({type(exc.__cause__).__name__})")
    if type(exc).__name__ == "CredentialUnavailableError":
        return AccessDenied(f"{kind} found no usable identity in this environment")
    aadsts = _AADSTS.search(str(exc.message or ""))
    detail = f": {aadsts.group(0)}" if aadsts else ""
    return AccessDenied(f"{kind} could not obtain a token{detail}")


def _http_error(exc: Any, permission: str) -> ProviderError:
    """A Key Vault HTTP error by its status (the table below); 5xx is an outage."""
    status = exc.status_code or 0
    code, inner, message = _error_body(exc)
    retry_after = retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))
    make = _BY_STATUS.get(status) or (_server_error if status >= 500 else _unexpected)
    return make(_Answer(status, code, inner, message, permission, retry_after))


@dataclass(frozen=True)
class _Answer:
    status: int
    code: str | None
    inner: str | None
    message: str | None
    permission: str
    retry_after: float | None


def _forbidden(a: _Answer) -> ProviderError:
    reason = _FORBIDDEN_REASONS.get(a.inner or "", a.message or "forbidden").replace("{permission}", a.permission)
    refused = PermissionRefused if a.inner in _PERMISSION else AccessDenied
    return refused(f"403 {a.inner or a.code or 'Forbidden'}: {reason}")


def _server_error(a: _Answer) -> ProviderError:
    return Unavailable(f"{a.status} {a.code or 'ServerError'}: vault error", retry_after=a.retry_after)


def _unexpected(a: _Answer) -> ProviderError:
    return ProviderError(f"unexpected HTTP {a.status} {a.code or ''}".rstrip())


_BY_STATUS: dict[int, Callable[[_Answer], ProviderError]] = {
    404: lambda a: SecretNotFound(f"{a.code or 'SecretNotFound'}: no such secret or version"),
    403: _forbidden,
    401: lambda a: AccessDenied("401: the vault rejected the token (wrong tenant, or no access)"),
    400: lambda a: SecretNotFound(f"400 {a.code or 'BadParameter'}: the vault refuses this name or version"),
    429: lambda a: Unavailable(f"429 {a.code or 'Throttled'}: throttled by the vault", retry_after=a.retry_after),
}


def _from_vault(exc: Any, vault_url: str) -> bool:
    """Whether an authentication error is the vault's own 401 (not the identity endpoint's)."""
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    return bool(request is not None and str(getattr(request, "url", "")).startswith(vault_url))


def _error_body(exc: Any) -> tuple[str | None, str | None, str | None]:
    """(code, innererror code, message) of a Key Vault error body; the message is one short line."""
    try:
        body = json.loads(exc.response.text())
        error = body["error"]
        inner = (error.get("innererror") or {}).get("code")
        message = str(error.get("message") or "").splitlines()[0][:300] or None
        return error.get("code"), inner, message
    except Exception:
        return None, None, None
