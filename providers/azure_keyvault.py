"""Azure Key Vault secrets (`type: azure-keyvault`), through azure-keyvault-secrets and azure-identity.

`ref` is the secret name, `version` a Key Vault version id (absent: the current version). A fetch
returns the value's bytes, the version id, the secret's content type (so `format: pem` can turn a
certificate's PKCS#12 into PEM) and its expiry. The SDK's own retries are off: the engine is the one
place that retries. Every SDK error goes through `_azure_errors.translate`, which keeps server text out of
messages except Key Vault's own 403 reason. Never logs, stores or repr()s a value, token or credential.

The cheap change check. Key Vault's list operation (`GET /secrets`, 25 a page) returns each secret's
base id *without* the version and the current version's attributes (REST reference: "only the base
secret identifier and its attributes are provided"). So the list cannot name the version; it can
only prove that nothing changed. A secret read once (one GET: its version and attributes) is
"settled" when that read happened at least `_SETTLE_SECONDS` after the version's `updated` second,
by the server's own `Date` header: any later write would then carry a later `updated`. For settled
secrets, one list page that shows the same attributes confirms the version we have; anything else
(new attributes, unsettled, absent from the listing) costs one GET of that secret. Without the
secrets/list permission, GETs stand in and the listing is tried again every few minutes.

Key Vault has no batch read, so several values are fetched on a small bounded pool
(`Provider.each_concurrently`), keeping the batch rule. `version: previous` is the enabled version
created before the current (newest) one, found by listing the secret's versions; it follows rotations.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from bridge.config.fields import HttpUrl
from bridge.errors import ProviderError, SecretNotFound
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
from bridge.provider_rules import (
    Fallback,
    call,
    count,
    each,
    each_concurrently,
    fan_out,
    first_unavailable,
)
from providers._azure_credential import CountedCredential, CredentialSettings, DefaultCredentialSettings
from providers._azure_errors import PermissionRefused, translate

if TYPE_CHECKING:
    from azure.keyvault.secrets import KeyVaultSecret, SecretClient, SecretProperties

log = logging.getLogger("secrets_bridge.providers.azure_keyvault")

#: how long after a version's `updated` second a read must happen for a listing to vouch for it
_SETTLE_SECONDS = 2
#: Key Vault's largest list page
_PAGE_SIZE = 25
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
#: fetches of several values run on this many threads (Key Vault has no batch read)
_WORKERS = 8


class KeyVaultSettings(ProviderSettings):
    type: str = "azure-keyvault"
    vault_url: HttpUrl
    credential: CredentialSettings = DefaultCredentialSettings()
    #: the Microsoft Entra ID host for sovereign clouds, e.g. https://login.microsoftonline.us
    authority_host: HttpUrl | None = None
    #: a PEM bundle trusted instead of the system roots, for the vault and the identity endpoints
    ca_cert: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("vault_url", "authority_host")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        """Beyond any URL's rules (HttpUrl): https, and the host alone."""
        if value is not None and not re.match(r"^https://[^/\s]+/?$", value):
            raise ValueError("must be an https:// URL with no path, e.g. https://my-vault.vault.azure.net")
        return value.rstrip("/") if value else value


@dataclass(frozen=True)
class _Observation:
    """What one GET of the current version told us (never the value)."""

    version: str
    fingerprint: tuple[Any, ...]
    #: the read happened late enough after `updated` that an unchanged listing proves no new version
    settled: bool


class KeyVaultProvider(Provider):
    """One vault; `ref` is a secret name; `version` a version id or `previous`."""

    Settings = KeyVaultSettings
    settings: KeyVaultSettings
    capabilities = Capabilities(previous=True, cheap_versions=True)
    sdk_loggers = ("azure", "msal")
    credential_env = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD",
                      "IDENTITY_HEADER")

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self._client: SecretClient | None = None
        self._credential: CountedCredential | None = None
        self._lock = threading.Lock()
        self._seen: dict[str, _Observation] = {}  # lower-case name -> last current-version read
        self._expiry_warned: set[tuple[str, str]] = set()
        self.list_fallback = Fallback(name, "secrets/list", logger=log,
                                      instead="reading each secret once per check (grant secrets/list to need "
                                              "one list page per 25 secrets)")

    # -- the interface ---------------------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        version = self._previous(request.ref) if request.version == PREVIOUS else request.version
        secret, server_time = self._get(request.ref, version)
        props = secret.properties
        version = props.version or ""
        if request.version is None:
            self._observe(request.ref, props, server_time)
        expires_at = props.expires_on.timestamp() if props.expires_on else None
        if expires_at is not None and expires_at < server_time and self._first_expiry(request.ref, version):
            log.warning("%s: secret %s version %s expired at %s; Key Vault still serves it, so it is written",
                        self.name, request.ref, version, props.expires_on.isoformat() if props.expires_on else "")
        value = (secret.value or "").encode("utf-8")
        return Fetched(value, version, content_type=props.content_type, expires_at=expires_at)

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """One GET per value (Key Vault has no batch read), on a small pool under the batch rule."""
        return each_concurrently(self, [(r, r) for r in requests], self.fetch, workers=_WORKERS)

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The latest version of the unpinned (a listing vouches for settled secrets), `previous`
        from the version listing, a version id its own answer; under one batch rule."""
        unique = list(dict.fromkeys(requests))
        latest = self._latest([r.ref for r in unique if r.version is None])
        down = first_unavailable(latest.values())
        pinned = each(self, [(r, r) for r in unique if r.version is not None], self._pin, down=down)
        return {r: latest[r.ref] if r.version is None else pinned[r] for r in unique}

    def _current_version(self, ref: str) -> str | None:
        secret, server_time = self._get(ref, None)
        return self._observe(ref, secret.properties, server_time).version

    def _latest(self, refs: Sequence[str]) -> dict[str, VersionOutcome]:
        """One listing vouches for settled secrets; the rest (and any that changed) cost one GET each."""
        refs = list(dict.fromkeys(refs))
        out: dict[str, VersionOutcome] = {}
        with self._lock:
            settled = {ref.lower(): obs for ref in refs if (obs := self._seen.get(ref.lower())) and obs.settled}
        # A listing only pays off when it can stand in for two or more GETs.
        if len(settled) >= 2 and self.list_fallback.allowed():
            try:
                listed = self._list_fingerprints(set(settled))
                self.list_fallback.worked()
            except PermissionRefused as exc:
                self.list_fallback.refused(exc)
                listed = {}
            except ProviderError as exc:
                # down (the batch rule), or a credential every call would fail on: no GET per secret
                out.update(fan_out(exc, refs, Request, provider=self.name))
                return out
            for ref in refs:
                obs = settled.get(ref.lower())
                if obs is not None and listed.get(ref.lower()) == obs.fingerprint:
                    out[ref] = obs.version
        rest = [(ref, Request(ref)) for ref in refs if ref not in out]
        out.update(each_concurrently(self, rest, lambda r: self._current_version(r.ref), workers=_WORKERS))
        return {ref: out[ref] for ref in refs}

    def moves(self, version: str) -> bool:
        """`previous` moves with each new version; a version id never does."""
        return version == PREVIOUS

    def _pin(self, request: Request) -> str | None:
        """`previous` from the version listing (no value read); a version id is its own answer."""
        return self._previous(request.ref) if request.version == PREVIOUS else request.version

    def close(self) -> None:
        with self._lock:
            client, credential = self._client, self._credential
            self._client = self._credential = None
        if client is not None:
            client.close()
        if credential is not None:
            credential.close()

    def _translate(self, exc: Exception, ref: str, version: str | None,
                   permission: str = "secrets/get") -> ProviderError:
        kind = self._credential.kind if self._credential else "credential"
        error = translate(exc, vault_url=self.settings.vault_url, kind=kind, permission=permission)
        return error.at(provider=self.name, ref=ref, version=version)

    # -- SDK calls -------------------------------------------------------------------------------

    def _secret_client(self) -> SecretClient:
        with self._lock:
            if self._client is None:
                from azure.keyvault.secrets import SecretClient  # lazy: the SDK is an optional extra

                from providers._azure_credential import build_credential

                s = self.settings
                transport: dict[str, Any] = {
                    "retry_total": 0,  # the engine is the one place that retries
                    "connection_timeout": min(10.0, s.timeout_seconds),
                    "read_timeout": s.timeout_seconds,
                }
                if s.ca_cert is not None:
                    transport["connection_verify"] = str(s.ca_cert)
                inner = build_credential(s.credential, authority_host=s.authority_host, transport=transport)
                self._credential = CountedCredential(inner, functools.partial(count, self.name))
                self._client = SecretClient(s.vault_url, self._credential, **transport)
            return self._client

    def _check_name(self, ref: str, version: str | None) -> None:
        if not _SECRET_NAME.match(ref):
            raise SecretNotFound("not a valid Key Vault secret name (1-127 letters, digits and dashes)",
                                 provider=self.name, ref=ref, version=version)

    def _get(self, ref: str, version: str | None) -> tuple[KeyVaultSecret, float]:
        """GET one secret (latest or pinned) and the server's clock at the time."""
        self._check_name(ref, version)
        dates: list[str] = []

        def remember_date(response: Any) -> None:
            dates.append(response.http_response.headers.get("Date", ""))

        secret = call(self.name, "get_secret",
                           lambda: self._secret_client().get_secret(ref, version, raw_response_hook=remember_date),
                           translate=lambda exc: self._translate(exc, ref, version), ref=ref, version=version)
        return secret, _server_time(dates[-1] if dates else "")

    def _previous(self, ref: str) -> str:
        """The id of the enabled version created before the newest one (Key Vault's current version).

        Versions created in the same second keep the listing's order."""
        self._check_name(ref, PREVIOUS)
        versions: list[tuple[float, int, bool, str]] = []
        pager = self._secret_client().list_properties_of_secret_versions(ref, max_page_size=_PAGE_SIZE).by_page()
        for page in self._paged(pager, "list_secret_versions", ref, PREVIOUS):
            versions += [(p.created_on.timestamp() if p.created_on else 0.0, len(versions) + i, bool(p.enabled),
                          p.version or "") for i, p in enumerate(page)]
        if not versions:
            raise SecretNotFound("no such secret", provider=self.name, ref=ref, version=PREVIOUS)
        newest = max(versions)
        before = [v for v in versions if v[2] and v < newest]
        if not before:
            raise SecretNotFound("no enabled version before the current one", provider=self.name, ref=ref,
                                 version=PREVIOUS)
        return max(before)[3]

    def _list_fingerprints(self, wanted: set[str]) -> dict[str, tuple[Any, ...]]:
        """Fingerprints of the wanted names from the vault listing, paging only while it still pays."""
        found: dict[str, tuple[Any, ...]] = {}
        pager = self._secret_client().list_properties_of_secrets(max_page_size=_PAGE_SIZE).by_page()
        for pages, page in enumerate(self._paged(pager, "list_secrets", "", None), start=1):
            for props in page:
                if props.name and props.name.lower() in wanted:
                    found[props.name.lower()] = _fingerprint(props)
            unseen = len(wanted) - len(found)
            # Stop when every name is found, or when GETs for the rest cost no more than paging on.
            if unseen == 0 or pages >= unseen:
                break
        return found

    def _paged(self, pager: Any, operation: str, ref: str, version: str | None) -> Iterator[list[Any]]:
        """The pages of an SDK pager, one counted call each, stopping after the last page."""
        while True:
            page: list[Any] = call(self.name, operation, lambda: list(next(pager)),
                                        translate=lambda exc: self._translate(exc, ref, version, "secrets/list"),
                                        ref=ref, version=version)
            yield page
            if getattr(pager, "continuation_token", None) is None:
                return

    def _first_expiry(self, ref: str, version: str) -> bool:
        with self._lock:
            first = (ref, version) not in self._expiry_warned
            self._expiry_warned.add((ref, version))
        return first

    def _observe(self, ref: str, props: SecretProperties, server_time: float) -> _Observation:
        updated = props.updated_on.timestamp() if props.updated_on else server_time
        obs = _Observation(props.version or "", _fingerprint(props),
                           settled=server_time - updated >= _SETTLE_SECONDS)
        with self._lock:
            self._seen[ref.lower()] = obs
        return obs

    # -- errors ----------------------------------------------------------------------------------



def _fingerprint(props: SecretProperties) -> tuple[Any, ...]:
    return (props.updated_on, props.enabled, props.expires_on, props.not_before, props.content_type)


def _server_time(date_header: str) -> float:
    try:
        return parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError):
        return time.time() - _SETTLE_SECONDS  # no Date: assume our clock, but never settle early
