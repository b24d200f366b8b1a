"""How the AWS Secrets Manager provider talks to AWS: sessions, credentials, clients, errors.

Owns building a botocore session from the standard credential chain (environment, shared config,
web identity, container and instance metadata), optionally assuming a role on top of it, and the
one translation of botocore/boto errors into the core's taxonomy. It never puts a secret value, a
token or a credential into a message: AWS error text is passed through a redaction step, and
botocore's own exception text (which can carry URLs and headers) is never echoed.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from bridge.errors import AccessDenied, ConfigError, ProviderError, SecretNotFound, Unavailable
from bridge.provider_rules import retry_after_seconds

#: AWS error codes, by the core class they map to. Anything 5xx or 429 is Unavailable as well.
_NOT_FOUND = {"ResourceNotFoundException"}
#: IAM refuses this action: the credentials worked, the policy does not allow the call
_ACTION_DENIED = {"AccessDeniedException", "AccessDenied"}
_ACCESS = _ACTION_DENIED | {
    "DecryptionFailure", "UnrecognizedClientException",
    "InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature",
    "ExpiredTokenException", "ExpiredToken", "MissingAuthenticationToken", "InvalidIdentityToken",
    "IDPRejectedClaim", "KMSAccessDeniedException", "KMSDisabledException", "KMSInvalidStateException",
    "RegionDisabledException",
}
_THROTTLED = {
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "SlowDown", "PriorRequestNotComplete",
}
_UNAVAILABLE = _THROTTLED | {
    "InternalServiceError", "InternalServiceErrorException", "InternalFailure", "ServiceUnavailable",
    "RequestTimeout", "RequestTimeoutException", "IDPCommunicationError",
}
#: a request AWS refuses as malformed: permanent for this ref/version, like a missing secret
_REJECTED = {"InvalidParameterException", "ValidationException", "InvalidRequestException"}
#: codes whose AWS message may echo request details (canonical request, signed headers)
_NO_MESSAGE = {"SignatureDoesNotMatch", "InvalidSignatureException", "IncompleteSignature"}



class ActionDenied(AccessDenied):
    """IAM denied this API action itself (AccessDeniedException): the credentials are good, so a
    cheaper call (ListSecrets, BatchGetSecretValue) can be replaced by another the policy allows.
    A bad or expired credential is a plain AccessDenied: every call would fail alike."""


#: each code's class; where a code is in two sets, the later one here wins (ActionDenied over
#: AccessDenied); a code in none is classed by its HTTP status
_BY_CODE: dict[str, type[ProviderError]] = {
    **dict.fromkeys(_REJECTED, SecretNotFound), **dict.fromkeys(_UNAVAILABLE, Unavailable),
    **dict.fromkeys(_ACCESS, AccessDenied), **dict.fromkeys(_ACTION_DENIED, ActionDenied),
    **dict.fromkeys(_NOT_FOUND, SecretNotFound),
}

_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA)[A-Z0-9]{12,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9/+=_\-.]{40,}")
_SPACES = re.compile(r"\s+")
_MAX_MESSAGE = 240


def client_config(timeout_seconds: float) -> Config:
    """No SDK retries (the engine is the one place that retries) and bounded waits."""
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(timeout_seconds, 5.0),
        read_timeout=timeout_seconds,
        user_agent_extra="secrets-bridge",
    )


def base_session(profile: str | None, region: str | None, *, where: str) -> tuple[Any, str]:
    """A botocore session for `profile` and the region to use; ConfigError when either is unusable.

    Nothing here touches the network: credentials are resolved on the first call."""
    session = botocore.session.Session(profile=profile)
    if profile is not None and profile not in session.available_profiles:
        raise ConfigError(f"{where}.profile: no AWS profile named {profile!r} in the shared config")
    try:
        resolved = region or session.get_config_variable("region")
    except ProfileNotFound:
        raise ConfigError(f"{where}.profile: no AWS profile named {profile!r}") from None
    if not resolved:
        raise ConfigError(f"{where}.region: no AWS region; set region, AWS_REGION or a profile's region")
    return session, str(resolved)


class _AssumedRole(CredentialProvider):  # type: ignore[misc]
    """A credential provider that assumes `role_arn` with the standard chain's credentials."""

    METHOD = "assume-role"
    CANONICAL_NAME = "secrets-bridge-assume-role"

    def __init__(self, fetcher: AssumeRoleCredentialFetcher) -> None:
        super().__init__()
        self._fetcher = fetcher

    def load(self) -> Credentials:
        # Deferred: the first AssumeRole happens on the first request and refreshes before expiry.
        refresh = self._fetcher.fetch_credentials
        return DeferredRefreshableCredentials(method=self.METHOD, refresh_using=refresh)


def open_client(
    *,
    profile: str | None,
    region: str,
    endpoint_url: str | None,
    role_arn: str | None,
    external_id: str | None,
    session_name: str,
    timeout_seconds: float,
) -> Any:
    """A Secrets Manager client on the standard chain, optionally through an assumed role.

    Resolves credentials (may reach STS or instance metadata), so call it where errors are
    translated. STS honours AWS_ENDPOINT_URL_STS like every AWS SDK."""
    config = client_config(timeout_seconds)
    session = botocore.session.Session(profile=profile)
    if role_arn is not None:
        source = botocore.session.Session(profile=profile)
        source_credentials = source.get_credentials()
        if source_credentials is None:
            raise NoCredentialsError()
        extra: dict[str, Any] = {"RoleSessionName": session_name}
        if external_id is not None:
            extra["ExternalId"] = external_id
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=functools.partial(source.create_client, region_name=region, config=config),
            source_credentials=source_credentials,
            role_arn=role_arn,
            extra_args=extra,
        )
        session.register_component("credential_provider", CredentialResolver([_AssumedRole(fetcher)]))
    return session.create_client(
        "secretsmanager", region_name=region, endpoint_url=endpoint_url, config=config
    )


def translate_error(
    exc: BaseException, *, provider: str, ref: str, version: str | None, operation: str
) -> ProviderError:
    """The one place a botocore/boto exception becomes a core error class."""
    where: dict[str, Any] = {"provider": provider, "ref": ref, "version": version}
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        return error_from_code(
            str(error.get("Code", "")),
            str(error.get("Message", "")),
            operation=exc.operation_name or operation,
            status=meta.get("HTTPStatusCode"),
            retry_after=retry_after_seconds(meta.get("HTTPHeaders")),
            **where,
        )
    name = type(exc).__name__
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDenied(
            f"{operation}: no usable AWS credentials (environment, shared config, web identity, "
            "container or instance metadata)", **where)
    if isinstance(exc, CredentialRetrievalError):
        return AccessDenied(f"{operation}: could not obtain AWS credentials ({name})", **where)
    if isinstance(exc, NoRegionError | ProfileNotFound):
        return AccessDenied(f"{operation}: AWS configuration incomplete ({name})", **where)
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return Unavailable(f"{operation}: cannot reach AWS ({name})", **where)
    if isinstance(exc, BotoCoreError):
        return Unavailable(f"{operation}: AWS SDK error ({name})", **where)
    return Unavailable(f"{operation}: unexpected error ({name})", **where)


def error_from_code(
    code: str,
    message: str,
    *,
    operation: str,
    status: int | None = None,
    retry_after: float | None = None,
    provider: str,
    ref: str,
    version: str | None,
) -> ProviderError:
    """Classify an AWS error code (from an exception or a batch item's `Errors` entry)."""
    where: dict[str, Any] = {"provider": provider, "ref": ref, "version": version}
    text = f"{operation}: {code or 'error'}" + (f" (HTTP {status})" if status else "")
    detail = "" if code in _NO_MESSAGE else _redact(message)
    if detail:
        text += f": {detail}"
    # AWS has no code of its own for a secret scheduled for deletion; its message is the only signal.
    if code == "InvalidRequestException" and re.search(r"delet", message, re.IGNORECASE):
        return SecretNotFound(f"{operation}: secret is marked for deletion", **where)
    cls = _BY_CODE.get(code) or _by_status(status)
    if cls is Unavailable and code in _THROTTLED and retry_after is None:
        text += " (throttled)"
    return cls(text, retry_after=retry_after if cls is Unavailable else None, **where)


def _by_status(status: int | None) -> type[ProviderError]:
    """The class of an error code the table does not know, by HTTP status."""
    if status in (401, 403):
        return AccessDenied
    return Unavailable  # 429, 5xx, or anything unforeseen: retried, never taken as "gone"


def _redact(message: str) -> str:
    """AWS error text without key ids or anything token-like, on one short line."""
    text = _KEY_ID.sub("<key id>", message)
    text = _LONG_TOKEN.sub("<redacted>", text)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
