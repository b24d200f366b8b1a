"""Google Cloud Secret Manager (`type: gcp-secretmanager`), through google-cloud-secret-manager over REST.

`ref` is a secret id (in the provider's project) or a full `projects/P/secrets/S` name; `version` a
version number, `latest` (the default) or `previous` (the newest enabled version before the newest
enabled one). A fetch returns the payload's bytes and the version number, after checking the
payload's CRC32C: a mismatch is an error for that secret, never a value. Credentials are Google's
Application Default Credentials (a service-account key, an `external_account` file for workload
identity federation, or the metadata server), or `credentials_file`. The client's own retries are
off: the engine is the one place that retries. Every SDK error is translated through one table.
Never logs, stores or repr()s a value, token or credential.

The change check, designed around the quotas (per project and minute: 90,000 access calls, but 600
metadata reads): an unpinned secret is checked by *accessing* `latest`, which names the version it
resolved to and costs one call from the large quota, where a metadata read (`versions.get`,
`versions.list`) would cost one from the small one. The payload that check brings is handed to the
fetch that follows in the same cycle (and dropped by it, or by the next check), so a change costs no
second call. Only `previous` needs a
version listing (one metadata read). A number never moves and is never checked.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, Field, field_validator

from bridge.config.fields import HttpUrl
from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import (
    PREVIOUS,
    Capabilities,
    Fetched,
    Outcome,
    Provider,
    ProviderSettings,
    Request,
    VersionOutcome,
)
from bridge.provider_rules import ErrorMap, call, each, each_concurrently, first_unavailable, retry_after_seconds

if TYPE_CHECKING:
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient

log = logging.getLogger("secrets_bridge.providers.gcp_secretmanager")

LATEST = "latest"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_FULL_NAME = re.compile(r"^projects/([a-z0-9][a-z0-9.:-]{0,62})/secrets/([A-Za-z0-9_-]{1,255})$")
#: values fetched (or checked) on this many threads: Secret Manager has no batch read
_WORKERS = 8
#: how long a payload read by the change check waits for the fetch of the same cycle
_HANDOFF_SECONDS = 30.0
#: the largest page `versions.list` returns
_PAGE_SIZE = 25000


class GcpSecretManagerSettings(ProviderSettings):
    type: str = "gcp-secretmanager"
    #: the project of bare secret ids; default: the credentials' project
    project: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.:-]{0,62}$")
    #: a private endpoint (`https://host[:port]`), or an emulator's `http://host:port` (no token is sent)
    endpoint: HttpUrl = DEFAULT_ENDPOINT
    #: a PEM bundle trusted instead of the system roots, for Secret Manager and the token endpoints
    ca_cert: Path | None = None
    #: a service-account key or an `external_account` file; default: Application Default Credentials
    credentials_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, validation_alias=AliasChoices("timeout_seconds", "timeout"))

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        """Beyond any URL's rules (HttpUrl): the scheme and host alone, no path."""
        if not re.match(r"^https?://[^/\s:]+(:\d{1,5})?/?$", value):
            raise ValueError("must be https://host[:port] (or http://host:port for an emulator), with no path")
        return value.rstrip("/")


class BadChecksum(ProviderError):
    """The payload does not match the CRC32C the service sent with it: never written."""

    code = "bad_checksum"


def _says(kind: type[ProviderError], message: str) -> Callable[[Any], ProviderError]:
    """A row's maker: `kind` with `message`, prefixed by the HTTP status and Google's status word, and
    the answer's Retry-After. No server text, value or token."""

    def make(exc: Any) -> ProviderError:
        response = getattr(exc, "response", None)
        prefix = " ".join(str(p) for p in (getattr(response, "status_code", None), _status_word(response)) if p)
        return kind(f"{prefix}: {message}" if prefix else message,
                    retry_after=retry_after_seconds(getattr(response, "headers", None)))

    return make


@functools.cache
def _errors() -> ErrorMap:
    """SDK and transport exceptions -> the core's classes; the first matching row wins (the SDK is lazy)."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    return ErrorMap([
        (api.NotFound, _says(SecretNotFound, "no such secret or version")),
        (api.FailedPrecondition, _says(SecretNotFound, "the version is disabled or destroyed")),
        (api.BadRequest, _says(SecretNotFound, "Secret Manager refuses this name or version (or it is "
                                               "disabled or destroyed)")),
        (api.Forbidden, _says(AccessDenied, "permission denied (grant roles/secretmanager.secretAccessor)")),
        (api.Unauthorized, _says(AccessDenied, "Secret Manager rejected the access token")),
        (api.TooManyRequests, _says(Unavailable, "throttled: the project's Secret Manager quota is exhausted")),
        ((api.ServerError, api.DeadlineExceeded), _says(Unavailable, "Secret Manager failed or did not answer")),
        (auth.DefaultCredentialsError, _says(AccessDenied, "no usable Google credentials (credentials_file, "
                                                           "GOOGLE_APPLICATION_CREDENTIALS or a metadata server)")),
        # a token endpoint's 5xx is marked retryable by google-auth: an outage, not a refusal
        (auth.RefreshError, lambda e: _says(Unavailable if e.retryable else AccessDenied,
                                            "could not obtain an access token")(e)),
        (auth.OAuthError, _says(AccessDenied, "the token exchange (STS) refused the subject token")),
        ((auth.TransportError, auth.TimeoutError), _says(Unavailable, "cannot reach the token endpoint")),
        (requests.exceptions.Timeout, _says(Unavailable, "Secret Manager did not answer in time")),
        (requests.exceptions.ConnectionError, _says(Unavailable, "cannot reach Secret Manager")),
        (api.GoogleAPICallError, _says(ProviderError, "unexpected answer from Secret Manager")),
    ], default=lambda e: Unavailable(f"unexpected {type(e).__name__} from the Google SDK"))


class GcpSecretManagerProvider(Provider):
    """One set of credentials; `ref` is a secret id or `projects/P/secrets/S`; `version` a number,
    `latest` or `previous`."""

    Settings = GcpSecretManagerSettings
    settings: GcpSecretManagerSettings
    # `versions()` accesses `latest`: it *is* a fetch (from the large quota), whose payload serves the
    # fetch that follows; there is nothing cheaper to declare
    capabilities = Capabilities(previous=True, cheap_versions=False)
    sdk_loggers = ("google", "urllib3")
    #: the key (or external account) file that ADC reads: the bridge's identity, not an exec child's
    credential_env = ("GOOGLE_APPLICATION_CREDENTIALS",)

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self._client: SecretManagerServiceClient | None = None
        self._project: str | None = settings.project
        self._lock = threading.Lock()
        #: payloads the last change check read, for the fetch of the same cycle: request -> (when, value)
        self._handoff: dict[Request, tuple[float, Fetched]] = {}

    # -- the interface ---------------------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        with self._lock:
            handed = self._handoff.pop(request, None)
        if handed is not None and time.monotonic() - handed[0] < _HANDOFF_SECONDS:
            return handed[1]
        return self._fetch_now(request)

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """What the change check just read is served as it is; the rest cost one access call each (there
        is no batch read), on a small pool under the batch rule. The check's other payloads are dropped."""
        with self._lock:
            handed, self._handoff = self._handoff, {}
        now = time.monotonic()
        out: dict[Request, Outcome] = {r: handed[r][1] for r in requests
                                       if r in handed and now - handed[r][0] < _HANDOFF_SECONDS}
        out.update(each_concurrently(self, [(r, r) for r in requests if r not in out], self._fetch_now,
                                     workers=_WORKERS))
        return out

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """`latest` by accessing it (the large quota; the payload is kept for the fetch that follows),
        `previous` by one version listing, a number is its own answer."""
        unique = list(dict.fromkeys(requests))
        with self._lock:
            self._handoff.clear()
        latest = [(r, r) for r in unique if (r.version or LATEST) == LATEST]
        previous = [(r, r) for r in unique if r.version == PREVIOUS]
        out: dict[Request, VersionOutcome] = dict(each_concurrently(self, latest, self._check, workers=_WORKERS))
        down = first_unavailable(out.values())
        out.update(each_concurrently(self, previous, lambda r: self._previous(r.ref), workers=_WORKERS, down=down))
        down = down or first_unavailable(out.values())
        numbers = [(r, r) for r in unique if r not in out]
        out.update(each(self, numbers, self._number, down=down))
        return {r: out[r] for r in unique}

    def moves(self, version: str) -> bool:
        """`latest` and `previous` move with each new version; a number never does."""
        return version in (LATEST, PREVIOUS)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._handoff.clear()
        if client is not None:
            client.transport.close()  # type: ignore[no-untyped-call]

    # -- calls -----------------------------------------------------------------------------------

    def _number(self, request: Request) -> str | None:
        """A number pin is its own answer (no call); a malformed ref or version is an error here too."""
        self._split(request.ref, request.version)
        return request.version

    def _fetch_now(self, request: Request) -> Fetched:
        version = request.version or LATEST
        if version == PREVIOUS:
            version = self._previous(request.ref)
        return self._access(request.ref, version, request.version)

    def _check(self, request: Request) -> str | None:
        fetched = self._access(request.ref, LATEST, request.version)
        with self._lock:
            self._handoff[request] = (time.monotonic(), fetched)
        return fetched.version

    def _access(self, ref: str, version: str, asked: str | None) -> Fetched:
        """One `versions.access` call, its CRC32C checked."""
        import google_crc32c

        name = f"{self._secret_name(ref, asked)}/versions/{version}"
        response = call(self.name, "access_secret_version",
                        lambda: self._sm().access_secret_version(name=name, retry=None,
                                                                 timeout=self.settings.timeout_seconds),
                        translate=_errors(), ref=ref, version=asked)
        data = bytes(response.payload.data)
        if "data_crc32c" in response.payload and google_crc32c.value(data) != response.payload.data_crc32c:
            raise BadChecksum("the payload does not match its CRC32C checksum; not written",
                              provider=self.name, ref=ref, version=asked)
        return Fetched(data, response.name.rsplit("/", 1)[-1])

    def _previous(self, ref: str) -> str:
        """The number of the newest enabled version before the newest enabled one (metadata reads)."""
        parent = self._secret_name(ref, PREVIOUS)
        numbers: list[int] = []
        cursor = ""  # where the next page starts
        while True:
            page = call(self.name, "list_secret_versions",
                        lambda cursor=cursor: self._sm().list_secret_versions(  # type: ignore[misc]
                            request={"parent": parent, "filter": "state:ENABLED", "page_size": _PAGE_SIZE,
                                     "page_token": cursor},
                            retry=None, timeout=self.settings.timeout_seconds),
                        translate=_errors(), ref=ref, version=PREVIOUS)
            numbers += [int(v.name.rsplit("/", 1)[-1]) for v in page.versions]
            cursor = page.next_page_token
            if not cursor:
                break
        if len(numbers) < 2:
            raise SecretNotFound("no enabled version before the newest enabled one", provider=self.name, ref=ref,
                                 version=PREVIOUS)
        return str(sorted(numbers)[-2])

    def _split(self, ref: str, version: str | None) -> tuple[str | None, str]:
        """(project or None, secret id) of a ref; a malformed ref or version is SecretNotFound, no call."""
        full = _FULL_NAME.match(ref)
        if full is None and not _SECRET_ID.match(ref):
            raise SecretNotFound("not a secret id (1-255 letters, digits, - and _) or projects/P/secrets/S name",
                                 provider=self.name, ref=ref, version=version)
        if version not in (None, LATEST, PREVIOUS) and not (version or "").isdigit():
            raise SecretNotFound("version must be a number, latest or previous", provider=self.name, ref=ref,
                                 version=version)
        return (full.group(1), full.group(2)) if full else (None, ref)

    def _secret_name(self, ref: str, version: str | None) -> str:
        project, secret = self._split(ref, version)
        if project is None:
            self._sm()  # the credentials may name the project
            project = self._project
        if project is None:
            raise SecretNotFound("a bare secret id needs a project: set `project` (the credentials name none)",
                                 provider=self.name, ref=ref, version=version)
        return f"projects/{project}/secrets/{secret}"

    def _sm(self) -> SecretManagerServiceClient:
        with self._lock:
            if self._client is None:
                from providers._gcp_client import build_client

                try:
                    self._client, project = build_client(self.settings)
                except Exception as exc:
                    raise _errors()(exc) from None
                self._project = self._project or project
            return self._client


def _status_word(response: Any) -> str | None:
    """The `status` of a Google error body (NOT_FOUND, FAILED_PRECONDITION...), a fixed vocabulary."""
    try:
        status = response.json()["error"]["status"]
    except Exception:
        return None
    return status if isinstance(status, str) and re.fullmatch(r"[A-Z_]{1,40}", status) else None
