"""How the AWS providers (Secrets Manager, SSM Parameter Store) talk to AWS: settings, credentials,
clients, counted calls, errors.

Owns the settings both share (region, endpoint_url, role_arn, profile, timeout), building a botocore
session from the standard credential chain (environment, shared config, web identity, container and
instance metadata), optionally assuming a role on top of it, the counted call, and the one
translation of botocore/boto errors into the core's taxonomy, read from a table of AWS error codes.
It never puts a secret value, a token or a credential into a message: AWS error text is passed
through a redaction step, and botocore's own exception text (which can carry URLs and headers) is
never echoed.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

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
from pydantic import Field, SecretStr, model_validator

from bridge.config.fields import HttpUrl
from bridge.errors import AccessDenied, ConfigError, ProviderError, SecretNotFound, Unavailable
from bridge.provider import ProviderSettings
from bridge.provider_rules import ErrorMap, call, retry_after_seconds

if TYPE_CHECKING:
    from bridge.provider import Provider

#: the SDK loggers and credential variables of every AWS provider (the seam reads them)
SDK_LOGGERS = ("botocore", "boto3")
CREDENTIAL_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AWS_CONTAINER_AUTHORIZATION_TOKEN")  # the last: EKS Pod Identity / ECS


class ActionDenied(AccessDenied):
    """IAM denied this API action itself (AccessDeniedException): the credentials are good, so a
    cheaper call (ListSecrets, BatchGetSecretValue) can be replaced by another the policy allows.
    A bad or expired credential is a plain AccessDenied: every call would fail alike."""


#: AWS error codes (both services), by the core class each means. An unlisted code is Unavailable,
#: and so is anything 5xx or 429; an unlisted 401/403 is AccessDenied.
_ACCESS_CODES = (
    "DecryptionFailure", "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "IncompleteSignature", "ExpiredTokenException", "ExpiredToken",
    "MissingAuthenticationToken", "InvalidIdentityToken", "IDPRejectedClaim", "KMSAccessDeniedException",
    "KMSDisabledException", "KMSInvalidStateException", "RegionDisabledException",
    "InvalidKeyId",  # SSM: the SecureString's KMS key cannot be used
)
_THROTTLED = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "SlowDown", "PriorRequestNotComplete",
})
_UNAVAILABLE_CODES = (
    "InternalServiceError", "InternalServiceErrorException", "InternalFailure", "InternalServerError",
    "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException", "IDPCommunicationError",
)
#: a request AWS refuses as malformed: permanent for this ref/version, like a missing secret
_REJECTED_CODES = (
    "InvalidParameterException", "ValidationException", "InvalidRequestException",
    "InvalidFilterKey", "InvalidFilterOption", "InvalidFilterValue",  # SSM
)
ERROR_CLASSES: Mapping[str, type[ProviderError]] = {
    "ResourceNotFoundException": SecretNotFound,  # Secrets Manager
    "ParameterNotFound": SecretNotFound,  # SSM
    "ParameterVersionNotFound": SecretNotFound,  # SSM: no such version, or no version has the label
    # IAM refuses this action: the credentials worked, the policy does not allow the call
    "AccessDeniedException": ActionDenied,
    "AccessDenied": ActionDenied,
    **dict.fromkeys(_ACCESS_CODES, AccessDenied),
    **dict.fromkeys(_THROTTLED | set(_UNAVAILABLE_CODES), Unavailable),
    **dict.fromkeys(_REJECTED_CODES, SecretNotFound),
}
#: codes whose AWS message may echo request details (canonical request, signed headers)
_NO_MESSAGE = {"SignatureDoesNotMatch", "InvalidSignatureException", "IncompleteSignature"}


def _sdk_error(error_class: type[ProviderError], words: str) -> Callable[[BaseException], ProviderError]:
    return lambda exc: error_class(words.format(name=type(exc).__name__))


#: botocore's own exceptions (no AWS error code), the first matching row wins; never their text
_SDK_ERRORS = ErrorMap([
    ((NoCredentialsError, PartialCredentialsError), _sdk_error(
        AccessDenied, "no usable AWS credentials (environment, shared config, web identity, container or "
                      "instance metadata)")),
    (CredentialRetrievalError, _sdk_error(AccessDenied, "could not obtain AWS credentials ({name})")),
    ((NoRegionError, ProfileNotFound), _sdk_error(AccessDenied, "AWS configuration incomplete ({name})")),
    ((BotoConnectionError, HTTPClientError), _sdk_error(Unavailable, "cannot reach AWS ({name})")),
    (BotoCoreError, _sdk_error(Unavailable, "AWS SDK error ({name})")),
], default=_sdk_error(Unavailable, "unexpected error ({name})"))


_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA)[A-Z0-9]{12,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9/+=_\-.]{40,}")
_SPACES = re.compile(r"\s+")
_MAX_MESSAGE = 240


class AwsSettings(ProviderSettings):
    """The fields every AWS provider takes; credentials come from the standard chain."""

    #: default: AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    region: str | None = None
    #: a VPC endpoint or a test server; default: the region's public endpoint
    endpoint_url: HttpUrl | None = None
    #: assume this role with the chain's credentials (STS honours AWS_ENDPOINT_URL_STS)
    role_arn: str | None = Field(default=None, pattern=r"^arn:[\w-]+:iam::\d{12}:role/")
    external_id: SecretStr | None = None
    session_name: str = Field(default="secrets-bridge", pattern=r"^[\w+=,.@-]{2,64}$")
    #: a profile of the shared config/credentials files
    profile: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _external_id_needs_role(self) -> AwsSettings:
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id needs role_arn")
        return self


class AwsClient:
    """One provider's client of one AWS service: opened on the first call (credentials are resolved
    then, where errors are translated), every call counted and translated, closed once."""

    def __init__(self, provider: Provider, service: str, settings: AwsSettings) -> None:
        self._provider = provider
        self._service = service
        self._settings = settings
        # Fails fast (ConfigError) on an unknown profile or a missing region; no network here.
        _, self.region = base_session(settings.profile, settings.region, where=f"providers.{provider.name}")
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AwsClient {self._service} {self.region}>"

    def call(self, operation: str, params: dict[str, Any], *, ref: str, version: str | None) -> dict[str, Any]:
        """One counted API call (`operation` in AWS's spelling); botocore errors leave as core errors
        naming the provider, ref and version."""
        def send() -> dict[str, Any]:
            method: Callable[..., dict[str, Any]] = getattr(self._connected(), _snake(operation))
            return method(**params)

        def translate(exc: Exception) -> ProviderError:
            return translate_error(exc, provider=self._provider.name, ref=ref, version=version, operation=operation)

        return call(self._provider.name, operation, send, translate=translate, ref=ref, version=version)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _connected(self) -> Any:
        with self._lock:
            if self._client is None:
                s = self._settings
                self._client = open_client(
                    self._service, profile=s.profile, region=self.region, endpoint_url=s.endpoint_url,
                    role_arn=s.role_arn, session_name=s.session_name, timeout_seconds=s.timeout_seconds,
                    external_id=s.external_id.get_secret_value() if s.external_id is not None else None,
                )
            return self._client


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


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
    service: str,
    *,
    profile: str | None,
    region: str,
    endpoint_url: str | None,
    role_arn: str | None,
    external_id: str | None,
    session_name: str,
    timeout_seconds: float,
) -> Any:
    """A client of `service` on the standard chain, optionally through an assumed role.

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
    return session.create_client(service, region_name=region, endpoint_url=endpoint_url, config=config)


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
    error = _SDK_ERRORS(exc)
    return type(error)(f"{operation}: {error.message}", **where)


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
    """Classify an AWS error code (from an exception or a batch item's `Errors` entry) by
    ERROR_CLASSES; an unlisted code is AccessDenied on HTTP 401/403, else Unavailable."""
    where: dict[str, Any] = {"provider": provider, "ref": ref, "version": version}
    text = f"{operation}: {code or 'error'}" + (f" (HTTP {status})" if status else "")
    detail = "" if code in _NO_MESSAGE else _redact(message)
    if detail:
        text += f": {detail}"
    # AWS has no code of its own for a secret scheduled for deletion; its message is the only signal.
    if code == "InvalidRequestException" and re.search(r"delet", message, re.IGNORECASE):
        return SecretNotFound(f"{operation}: secret is marked for deletion", **where)
    error_class = ERROR_CLASSES.get(code) or (AccessDenied if status in (401, 403) else Unavailable)
    if error_class is not Unavailable:
        return error_class(text, **where)
    if code in _THROTTLED and retry_after is None:
        text += " (throttled)"
    return Unavailable(text, retry_after=retry_after, **where)


def _redact(message: str) -> str:
    """AWS error text without key ids or anything token-like, on one short line."""
    text = _KEY_ID.sub("<key id>", message)
    text = _LONG_TOKEN.sub("<redacted>", text)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
