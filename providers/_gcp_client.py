"""How the Secret Manager provider connects: credentials, the TLS trust, timeouts, the REST client.

Owns the choice of credentials (an emulator's `http://` endpoint: none, never a token in clear text;
`credentials_file`; else Application Default Credentials as google-auth resolves them: the
GOOGLE_APPLICATION_CREDENTIALS file, gcloud's file, the metadata server at GCE_METADATA_HOST) and
the one HTTP session that carries both the API calls and the token requests, so `ca_cert` and the
timeout apply to both. Never logs or keeps a credential; errors are translated by the provider.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from google.auth.transport.requests import AuthorizedSession
from google.auth.transport.requests import Request as AuthRequest
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from bridge.provider_rules import read_credential

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient

    from providers.gcp_secretmanager import GcpSecretManagerSettings

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class _TimedRequest(AuthRequest):
    """google-auth's HTTP request for token endpoints, with our timeout unless the caller names one
    (its own default is two minutes)."""

    def __init__(self, session: requests.Session, timeout_seconds: float) -> None:
        super().__init__(session=session)
        self._timeout_seconds = timeout_seconds

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=timeout or self._timeout_seconds, **kwargs)


class _TrustAdapter(HTTPAdapter):
    """Verifies servers against `ca_cert` whatever the environment says: requests lets
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE override a session's own `verify`."""

    def __init__(self, ca_cert: str) -> None:
        super().__init__()
        self._ca_cert = ca_cert

    def send(self, request: PreparedRequest, stream: bool = False,
             timeout: float | tuple[float | None, float | None] | None = None, verify: bool | str = True,
             cert: str | tuple[str, str] | None = None, proxies: dict[str, str] | None = None) -> Response:
        return super().send(request, stream=stream, timeout=timeout, verify=self._ca_cert, cert=cert,
                            proxies=proxies)


def build_client(settings: GcpSecretManagerSettings) -> tuple[SecretManagerServiceClient, str | None]:
    """A REST client for `settings`, and the project its credentials name (None when they name none)."""
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports.rest import (
        SecretManagerServiceRestTransport,
    )

    url = urlsplit(settings.endpoint)
    plain = requests.Session()
    if settings.ca_cert is not None:
        plain.mount("https://", _TrustAdapter(str(settings.ca_cert)))
    auth_request = _TimedRequest(plain, settings.timeout_seconds)
    credentials, project = _credentials(settings, auth_request, anonymous=url.scheme == "http")
    transport = SecretManagerServiceRestTransport(host=url.netloc, credentials=credentials, url_scheme=url.scheme)
    # The REST transport has no option for a CA bundle, and its session refreshes tokens through a
    # session of its own (with a two-minute timeout): both get `ca_cert` and our timeout. (The
    # transport keys its wrapped methods by its session, so the session is adjusted, not replaced.)
    session: AuthorizedSession = transport._session
    if settings.ca_cert is not None:
        session.mount("https://", _TrustAdapter(str(settings.ca_cert)))
    session._auth_request = auth_request
    return SecretManagerServiceClient(transport=transport), project


def _credentials(settings: GcpSecretManagerSettings, auth_request: AuthRequest, *,
                 anonymous: bool) -> tuple[Credentials, str | None]:
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    if anonymous:
        return AnonymousCredentials(), None  # type: ignore[no-untyped-call]
    if settings.credentials_file is not None:
        credentials, project = _from_file(str(settings.credentials_file), auth_request)
    else:
        credentials, project = google.auth.default(scopes=[SCOPE], request=auth_request)
    return credentials, project


def _from_file(path: str, auth_request: AuthRequest) -> tuple[Credentials, str | None]:
    """`credentials_file` by its `type`, each with its own loader (google-auth deprecates the one
    that loads any type: a file of an unexpected type may send the token exchange anywhere): a
    service-account key, or an `external_account` file (workload identity federation: AWS, an
    executable or a file/URL subject token, told apart as google-auth's own default does). Any other
    type is refused (DefaultCredentialsError, an AccessDenied naming the setting)."""
    from google.auth import exceptions

    try:
        info = json.loads(read_credential(path, "credentials_file"))
    except ValueError:
        raise exceptions.DefaultCredentialsError("credentials_file is not JSON") from None  # type: ignore[no-untyped-call]
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            key = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
            return key, info.get("project_id")
        if kind == "external_account":
            federated = _external_account(info)
            return federated, federated.get_project_id(request=auth_request)
    except ValueError:  # a field missing or malformed (its text may quote the file: not kept)
        raise exceptions.DefaultCredentialsError(f"credentials_file is not a valid {kind} file") from None  # type: ignore[no-untyped-call]
    raise exceptions.DefaultCredentialsError(  # type: ignore[no-untyped-call]
        "credentials_file must be a service_account key or an external_account file")


def _external_account(info: dict[str, Any]) -> Any:
    source = info.get("credential_source")
    if info.get("subject_token_type") == "urn:ietf:params:aws:token-type:aws4_request":
        from google.auth import aws

        return aws.Credentials.from_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
    if isinstance(source, dict) and source.get("executable") is not None:
        from google.auth import pluggable

        return pluggable.Credentials.from_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
    from google.auth import identity_pool

    return identity_pool.Credentials.from_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
