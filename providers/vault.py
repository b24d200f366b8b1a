"""HashiCorp Vault / OpenBao KV provider (hvac).

`ref` is a KV path such as `secret/app/db`; the mount and KV version are found from the server
(`sys/internal/ui/mounts`, as `vault kv get` does). KV v2 returns the version number; KV v1 has no
versions, so the engine compares content. Without `key` the whole map is written as compact JSON.
All hvac and transport errors are translated in `_translate`; messages carry Vault's error text
(never values) and never a token.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, model_validator

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import Fetched, Provider, ProviderSettings, Request
from providers.vault_auth import AuthConfig, TokenAuth, TokenKeeper

try:
    import hvac
    import requests
    from hvac import exceptions as hvac_errors
except ModuleNotFoundError as exc:  # pragma: no cover - the config loader turns this into a hint
    raise ModuleNotFoundError("hvac is not installed", name=exc.name) from None

log = logging.getLogger("secrets_bridge.providers.vault")
T = TypeVar("T")


class VaultSettings(ProviderSettings):
    type: str = "vault"
    address: str | None = None
    namespace: str | None = None
    ca_cert: Path | None = None
    tls_skip_verify: bool = False
    timeout: float = Field(default=10.0, gt=0)
    auth: AuthConfig = Field(default_factory=TokenAuth)

    @model_validator(mode="after")
    def _address(self) -> VaultSettings:
        if not (self.address or os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")):
            raise ValueError("address: required (or set VAULT_ADDR / BAO_ADDR)")
        return self


@dataclass(frozen=True)
class _Mount:
    path: str  # without trailing slash
    kv_version: int


class VaultProvider(Provider):
    Settings = VaultSettings
    settings: VaultSettings

    def __init__(self, name: str, settings: VaultSettings) -> None:
        super().__init__(name, settings)
        address = settings.address or os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=0)  # the engine is the one place that retries
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else not settings.tls_skip_verify
        self._client = hvac.Client(url=address, verify=verify, timeout=settings.timeout,
                                   namespace=settings.namespace, session=session)
        self._tokens = TokenKeeper(self._client, settings.auth)
        self._mounts: dict[str, _Mount] = {}
        self._no_metadata: set[str] = set()  # mounts whose metadata the policy does not let us read

    def close(self) -> None:
        self._client.adapter.close()

    # -- the Provider interface --------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        mount, path = self._split(request.ref)
        if mount.kv_version == 1:
            if request.version is not None:
                raise SecretNotFound("KV v1 has no versions; remove `version`")
            data = self._call("read", request, lambda: self._client.secrets.kv.v1.read_secret(
                path=path, mount_point=mount.path))["data"]
            return Fetched(_encode(data), None)
        if request.version is not None and not request.version.isdigit():
            raise SecretNotFound("a KV v2 version is a whole number")
        response = self._call("read", request, lambda: self._client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount.path, version=request.version, raise_on_deleted_version=True))
        body = response["data"]
        if body.get("data") is None:  # deleted or destroyed version
            raise SecretNotFound("version deleted or destroyed")
        return Fetched(_encode(body["data"]), str(body["metadata"]["version"]))

    def current_version(self, ref: str) -> str | None:
        mount, path = self._split(ref)
        if mount.kv_version == 1 or mount.path in self._no_metadata:
            return None  # the engine fetches and compares content
        request = Request(ref)
        try:
            meta = self._call("read_metadata", request, lambda: self._client.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount.path))["data"]
        except AccessDenied:
            # Common policies grant only `<mount>/data/*`: read values and compare instead.
            self._no_metadata.add(mount.path)
            log.warning("%s: no read access to %s/metadata/*; checking for changes by reading values "
                        "(grant it to check versions cheaply)", self.name, mount.path)
            return None
        return str(meta["current_version"])

    def maintain(self) -> None:
        """Renew the token between cycles, so a long refresh interval never lets it lapse."""
        if self._tokens.in_use():
            try:
                self._tokens.ensure()
            except (hvac_errors.VaultError, requests.RequestException, AccessDenied) as exc:
                log.debug("%s: token upkeep failed (%s)", self.name, type(exc).__name__)

    # -- internals -------------------------------------------------------------------------

    def _split(self, ref: str) -> tuple[_Mount, str]:
        """Find the mount holding `ref` (cached) and the path below it."""
        ref = ref.strip("/")
        for prefix, mount in self._mounts.items():
            if ref.startswith(prefix + "/"):
                return mount, ref[len(prefix) + 1:]
        request = Request(ref)
        try:
            info = self._call("mount_info", request, lambda: self._client.adapter.get(
                f"/v1/sys/internal/ui/mounts/{ref}"))["data"]
            mount = _Mount(info["path"].strip("/"), int((info.get("options") or {}).get("version") or 1))
            if info.get("type") not in ("kv", "generic"):
                raise SecretNotFound(f"{mount.path}/ is a {info.get('type')} mount, not KV")
        except AccessDenied as exc:
            if not self._tokens.in_use():
                raise  # no working token yet: nothing learnt about the mount
            # A working token whose policy denies the mount lookup: assume the first path segment
            # is a KV v2 mount (what `vault kv get` falls back to as well).
            mount = _Mount(ref.split("/", 1)[0], 2)
            log.info("%s: mount lookup refused (%s); assuming %s/ is KV v2", self.name, exc.message, mount.path)
        self._mounts[mount.path] = mount
        if not ref.startswith(mount.path + "/"):
            raise SecretNotFound(f"ref names the mount {mount.path}/ but no secret in it")
        return mount, ref[len(mount.path) + 1:]

    def _call(self, operation: str, request: Request, call: Callable[[], T]) -> T:
        """One Vault request with a live token; logs in again once if the token was refused."""
        for attempt in (1, 2):
            try:
                self._tokens.ensure()
                result = call()
                self.count(operation, "ok")
                return result
            except ProviderError as exc:
                self.count(operation, exc.code)
                raise exc.at(provider=self.name, ref=request.ref, version=request.version) from None
            except (hvac_errors.VaultError, requests.RequestException) as exc:
                error = _translate(exc).at(provider=self.name, ref=request.ref, version=request.version)
                self.count(operation, error.code)
                if (attempt == 1 and isinstance(error, AccessDenied)
                        and not isinstance(self.settings.auth, TokenAuth)):
                    self._tokens.invalidate()
                    continue
                raise error from None
        raise AssertionError("unreachable")


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _one_line(text: str) -> str:
    """Vault wraps errors as "1 error occurred:\n\t* permission denied\n\n": keep the reason."""
    text = re.sub(r"^\d+ errors? occurred:\s*", "", text.strip())
    return " ".join(text.replace("* ", "").split())


def _translate(exc: Exception) -> ProviderError:
    """The one place hvac and transport errors become the bridge's taxonomy."""
    if isinstance(exc, hvac_errors.VaultError):
        reason = _one_line(", ".join(str(e) for e in (exc.errors or []))) or type(exc).__name__
        if isinstance(exc, hvac_errors.InvalidPath):
            return SecretNotFound(f"not found ({reason})" if exc.errors else "not found")
        if isinstance(exc, hvac_errors.Forbidden | hvac_errors.Unauthorized):
            return AccessDenied(reason)
        if isinstance(exc, hvac_errors.InvalidRequest):
            return SecretNotFound(f"bad request: {reason}")
        return Unavailable(f"server error: {reason}")
    if isinstance(exc, requests.Timeout):
        return Unavailable("timed out")
    if isinstance(exc, requests.exceptions.SSLError):
        return Unavailable("TLS error (check ca_cert)")
    if isinstance(exc, requests.ConnectionError):
        return Unavailable("cannot connect")
    return Unavailable(type(exc).__name__)
