"""How the Azure Key Vault provider authenticates: its credential settings and the credential built from them.

Owns the `credential:` section (default chain, client secret, workload identity, managed identity)
and a thin wrapper that counts every token acquisition. It never logs, echoes or stores in a repr
a client secret, a federated token or an access token: literal secrets are `SecretStr`, secrets in
files are read only when the credential is built, and errors are translated by the provider.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.exceptions import ClientAuthenticationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from bridge.errors import AccessDenied
from bridge.provider_rules import read_credential


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DefaultCredentialSettings(_Section):
    """azure-identity's DefaultAzureCredential: environment, workload identity, managed identity, CLI..."""

    method: Literal["default"] = "default"


class ClientSecretSettings(_Section):
    """A service principal with a client secret, read from `client_secret_file` (or given literally)."""

    method: Literal["client_secret"]
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = None
    client_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ClientSecretSettings:
        if (self.client_secret_file is None) == (self.client_secret is None):
            raise ValueError("give exactly one of client_secret_file or client_secret")
        return self


class WorkloadIdentitySettings(_Section):
    """AKS workload identity; each field defaults to the variable the AKS webhook injects."""

    method: Literal["workload_identity"]
    tenant_id: str | None = None  # $AZURE_TENANT_ID
    client_id: str | None = None  # $AZURE_CLIENT_ID
    token_file: Path | None = None  # $AZURE_FEDERATED_TOKEN_FILE


class ManagedIdentitySettings(_Section):
    """A system-assigned managed identity, or a user-assigned one by `client_id`."""

    method: Literal["managed_identity"]
    client_id: str | None = None


def _method_shorthand(value: Any) -> Any:
    # `credential: managed_identity` is short for `credential: {method: managed_identity}`
    return {"method": value} if isinstance(value, str) else value


CredentialSettings = Annotated[
    DefaultCredentialSettings | ClientSecretSettings | WorkloadIdentitySettings | ManagedIdentitySettings,
    Field(discriminator="method"),
    BeforeValidator(_method_shorthand),
]


def build_credential(settings: CredentialSettings, *, authority_host: str | None,
                     transport: dict[str, Any]) -> TokenCredential:
    """The azure-identity credential for `settings`; `transport` carries TLS, timeout and retry options.

    Raises AccessDenied when a client secret file cannot be read (the message names the path only)."""
    from azure import identity  # lazy: only configs naming azure-keyvault import the SDK

    kwargs = dict(transport)
    if authority_host is not None and not isinstance(settings, ManagedIdentitySettings):
        kwargs["authority"] = authority_host
    if isinstance(settings, ClientSecretSettings):
        return identity.ClientSecretCredential(
            settings.tenant_id, settings.client_id, _client_secret(settings), **kwargs
        )
    if isinstance(settings, WorkloadIdentitySettings):
        if settings.tenant_id is not None:
            kwargs["tenant_id"] = settings.tenant_id
        if settings.client_id is not None:
            kwargs["client_id"] = settings.client_id
        if settings.token_file is not None:
            kwargs["token_file_path"] = str(settings.token_file)
        try:
            return identity.WorkloadIdentityCredential(**kwargs)
        except ValueError as exc:  # a missing tenant, client id or token file: names fields, no values
            raise AccessDenied(f"workload identity is not configured: {str(exc).splitlines()[0]}") from None
    if isinstance(settings, ManagedIdentitySettings):
        return identity.ManagedIdentityCredential(client_id=settings.client_id, **kwargs)
    return identity.DefaultAzureCredential(**kwargs)


def _client_secret(settings: ClientSecretSettings) -> str:
    if settings.client_secret is not None:
        return settings.client_secret.get_secret_value()
    assert settings.client_secret_file is not None
    secret = read_credential(settings.client_secret_file, "client_secret_file")
    if not secret:
        raise AccessDenied(f"client_secret_file {settings.client_secret_file} is empty")
    return secret


class CountedCredential:
    """Delegates to an azure-identity credential and counts each token request by outcome."""

    def __init__(self, inner: TokenCredential, count: Callable[[str, str], None]) -> None:
        self._inner = inner
        self._count = count

    def __repr__(self) -> str:
        return f"<CountedCredential {type(self._inner).__name__}>"

    @property
    def kind(self) -> str:
        return type(self._inner).__name__

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        token: AccessToken = self._counted(lambda: self._inner.get_token(
            *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs))
        return token

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        get_info = getattr(self._inner, "get_token_info", None)
        if get_info is None:  # a credential without the newer protocol
            options = options or {}
            token = self.get_token(*scopes, claims=options.get("claims"), tenant_id=options.get("tenant_id"),
                                   enable_cae=options.get("enable_cae", False))
            return AccessTokenInfo(token.token, token.expires_on)
        info: AccessTokenInfo = self._counted(lambda: get_info(*scopes, options=options))
        return info

    def _counted(self, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except ClientAuthenticationError:
            self._count("get_token", "access_denied")
            raise
        except Exception:
            self._count("get_token", "unavailable")
            raise
        self._count("get_token", "ok")
        return result

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
