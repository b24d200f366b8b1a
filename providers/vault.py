"""HashiCorp Vault / OpenBao provider (hvac).

`ref` is any Vault path. The mount holding it is found from the server (`sys/internal/ui/mounts`,
as `vault kv get` does): KV mounts are read the KV way (`vault_kv`); any other engine's path is a
plain read, or with `params` a write as `vault write` does (`vault_leases`), whose response may be
leased (database credentials) or time-limited (PKI certificates). Lease renewal, lookup and
revocation are methods here; when to call them is the engine's business. Every request goes
through `VaultClient.call`, the one place errors are translated; messages carry Vault's error
text, never a value, a token or a lease id.

Vault has no batch read, so `fetch_many` runs on a small bounded pool (`FETCH_WORKERS` threads over
one connection pool, the core's batch rule kept): the mount cache, the lease map, the token keeper
and the KV bookkeeping are safe to use from several threads.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import Field, model_validator

from bridge.config.fields import HttpUrl
from bridge.errors import AccessDenied, ProviderError, SecretNotFound
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
from bridge.provider_rules import count, each, each_concurrently
from providers import vault_leases
from providers.vault_auth import AuthConfig, TokenAuth, TokenLife
from providers.vault_client import VaultClient
from providers.vault_kv import KeyValue, Mount

try:
    import requests
    from hvac import exceptions as hvac_errors
except ModuleNotFoundError as exc:  # pragma: no cover - the config loader turns this into a hint
    raise ModuleNotFoundError("hvac is not installed", name=exc.name) from None

log = logging.getLogger("secrets_bridge.providers.vault")

#: leases remembered with the token that minted them (the oldest are forgotten past this)
_MAX_TRACKED_LEASES = 10_000
#: concurrent reads in one `fetch_many`: enough to hide the round trips to a nearby server, few
#: enough not to flood one (Vault Agent renders templates concurrently too); below the HTTP
#: connection pool's 10, so every thread keeps its connection
FETCH_WORKERS = 8
#: a token upkeep that failed (the server unreachable) is tried again this soon
_UPKEEP_RETRY_SECONDS = 5.0
#: a cached mount that finds nothing is looked up again at most this often (a secret that is
#: really missing costs one extra request per this time, not one per read)
MOUNT_RECHECK_SECONDS = 10.0

T = TypeVar("T")


class VaultSettings(ProviderSettings):
    type: str = "vault"
    address: HttpUrl | None = None
    namespace: str | None = None
    ca_cert: Path | None = None
    tls_skip_verify: bool = False
    timeout: float = Field(default=10.0, gt=0)
    auth: AuthConfig = Field(default_factory=TokenAuth)
    #: revoke the leases this bridge holds when it shuts down (the credentials stop working)
    revoke_on_exit: bool = False

    @model_validator(mode="after")
    def _address(self) -> VaultSettings:
        if not (self.address or os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")):
            raise ValueError("address: required (or set VAULT_ADDR / BAO_ADDR)")
        return self


class VaultProvider(Provider):
    Settings = VaultSettings
    settings: VaultSettings
    # any path with params is a write, as `vault write` does; a leased response is renewed
    capabilities = Capabilities(previous=True, params=True, leases=True, cheap_versions=True)
    sdk_loggers = ("hvac",)
    credential_env = ("VAULT_TOKEN", "BAO_TOKEN", "VAULT_SECRET_ID")

    def __init__(self, name: str, settings: VaultSettings) -> None:
        super().__init__(name, settings)
        address = settings.address or os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else not settings.tls_skip_verify
        self._vault = VaultClient(name, address, verify=verify, timeout=settings.timeout,
                                  namespace=settings.namespace, auth=settings.auth,
                                  count=functools.partial(count, name))
        self._client = self._vault.hvac  # tests look at the token in use
        self._origin = f"{address}|{settings.namespace or ''}"
        self._kv = KeyValue(self._vault, name)
        # Replaced, never changed in place, so a reader on another thread iterates a stable map;
        # new mounts are looked up one at a time, so a burst of first reads asks the server once.
        self._mounts: dict[str, Mount] = {}
        self._mount_lookup = threading.Lock()
        self._rechecked: dict[str, float] = {}  # mount path -> monotonic time it was last looked up again
        self._lease_tokens: dict[str, TokenLife] = {}  # lease id -> the life of the token that minted it
        self._lease_lock = threading.Lock()

    def close(self) -> None:
        self._vault.close()

    # -- the Provider interface --------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        try:
            mount, path = self._split(request)
            if not mount.is_kv:
                return self._minted(vault_leases.fetch_path(self._vault, request))
            if request.params is not None:
                raise SecretNotFound(f"{mount.path}/ is a KV mount: `params` (a write) apply to other engines")
            fetched, mount = self._through_mount(request, mount, path, self._kv.fetch)
        except ProviderError as exc:
            raise exc.at(provider=self.name, ref=request.ref, version=request.version) from None
        self._learn(mount)
        return fetched

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Each request on the pool; the first alone (it warms the token, the connection and the
        mount cache), and none started once the server is unavailable."""
        return each_concurrently(self, [(r, r) for r in requests], self.fetch, workers=FETCH_WORKERS)

    def moves(self, version: str) -> bool:
        """`previous` follows every new version; a version number never moves."""
        return version == PREVIOUS

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The latest or `previous` version of each KV v2 request from its metadata (no value read).
        Any other engine's path answers None: a plain read is compared by content, and a leased or
        issued value is renewed and re-issued on its own clock, never polled."""
        return each(self, [(r, r) for r in dict.fromkeys(requests)], self._resolve)

    # -- leases -------------------------------------------------------------------------------

    def renew(self, fetched: Fetched, increment_seconds: float | None) -> Fetched:
        """Renew `fetched`'s lease by `increment_seconds` (None: the role's default); returns the
        same value and version with `lease_seconds` as granted (less than asked at max_ttl) and
        `expires_at` no later than the end of the token that minted it (Vault revokes a token's
        leases with it), so `expires_at - obtained_at` is the time the value really has. A lease
        that is gone or not renewable is SecretNotFound: issue anew."""
        renewed = vault_leases.renew(self._vault, fetched, increment_seconds)
        if fetched.lease_id is None:
            return renewed
        with self._lease_lock:
            life = self._lease_tokens.get(fetched.lease_id)
        life = life or vault_leases.token_limited(fetched)
        return vault_leases.within_token_life(renewed, life)

    def revoke(self, lease_id: str) -> None:
        """Revoke a lease now (`revoke_on_exit`); the policy needs `update` on sys/leases/revoke."""
        vault_leases.revoke(self._vault, lease_id)
        with self._lease_lock:
            self._lease_tokens.pop(lease_id, None)

    def origin(self) -> str | None:
        return self._origin

    @property
    def revoke_on_exit(self) -> bool:
        return self.settings.revoke_on_exit

    def lease_alive(self, lease_id: str) -> float | None:
        """Seconds left on a lease, or None when it was revoked or expired (a restart resumes it or
        mints anew). A lease minted by an earlier process ends with that process's token: keep the
        `expires_at` it was fetched with, and use the smaller of the two."""
        left = vault_leases.lease_alive(self._vault, lease_id)
        if left is None:
            with self._lease_lock:
                self._lease_tokens.pop(lease_id, None)
        return left

    def maintain(self) -> float | None:
        """Renew the token between cycles, so a long refresh interval never lets it lapse."""
        if not self._vault.tokens.in_use():
            return None  # no token yet: the next fetch logs in
        try:
            self._vault.tokens.ensure()
        except (hvac_errors.VaultError, requests.RequestException, ProviderError) as exc:
            log.debug("%s: token upkeep failed (%s)", self.name, type(exc).__name__)
            return _UPKEEP_RETRY_SECONDS
        return self._vault.tokens.next_upkeep()

    # -- internals -------------------------------------------------------------------------

    def _resolve(self, request: Request) -> str | None:
        try:
            mount, path = self._split(request)
            if not mount.is_kv or request.params is not None:
                return None
            if request.version is not None and request.version != PREVIOUS:
                return request.version  # a number never moves
            version, mount = self._through_mount(request, mount, path, self._kv.current_version)
        except ProviderError as exc:
            raise exc.at(provider=self.name, ref=request.ref, version=request.version) from None
        if version is not None:
            self._learn(mount)
        return version

    def _minted(self, fetched: Fetched) -> Fetched:
        """A new lease ends no later than the token in use, which minted it."""
        if fetched.lease_id is None:
            return fetched
        life = self._vault.tokens.life
        with self._lease_lock:
            self._lease_tokens[fetched.lease_id] = life
            while len(self._lease_tokens) > _MAX_TRACKED_LEASES:
                del self._lease_tokens[next(iter(self._lease_tokens))]
        return vault_leases.within_token_life(fetched, life)

    def _learn(self, mount: Mount) -> None:
        """A read through an assumed mount worked: keep it."""
        if mount.guessed:
            with self._mount_lookup:
                self._mounts = {**self._mounts, mount.path: dataclasses.replace(mount, guessed=False)}

    def _through_mount(self, request: Request, mount: Mount, path: str,
                       read: Callable[[Mount, str, Request], T]) -> tuple[T, Mount]:
        """`read` through the cached `mount`; when it finds nothing, the mount may have changed on
        the server (KV v1 upgraded to v2, a mount disabled and enabled again as the other version):
        look it up again (at most once every MOUNT_RECHECK_SECONDS) and, if it did change, read
        through the new one."""
        try:
            return read(mount, path, request), mount
        except SecretNotFound:
            fresh = self._look_up_again(request, mount)
            if fresh is None:
                raise
            return read(*fresh, request), fresh[0]

    def _look_up_again(self, request: Request, mount: Mount) -> tuple[Mount, str] | None:
        """The mount holding the ref as the server says now, when it differs from `mount` (None when
        it is the same, or was looked up again too recently)."""
        if mount.guessed:
            return None  # never cached: looked up anew each time already
        now = time.monotonic()
        with self._mount_lookup:
            if now < self._rechecked.get(mount.path, -math.inf) + MOUNT_RECHECK_SECONDS:
                return None
            self._rechecked[mount.path] = now
            current = self._mounts.get(mount.path)
            if current is not None and current != mount:  # another thread has looked it up meanwhile
                return current, request.ref.strip("/")[len(current.path) + 1:]
            self._mounts = {p: m for p, m in self._mounts.items() if p != mount.path}
            fresh = self._look_up(request, request.ref.strip("/"))
        if fresh[0] == mount:
            return None
        log.info("%s: mount %s/ changed on the server (now %s v%d); reading through it", self.name,
                 fresh[0].path, fresh[0].type, fresh[0].kv_version)
        return fresh

    def _known(self, ref: str) -> tuple[Mount, str] | None:
        for prefix, mount in self._mounts.items():
            if ref.startswith(prefix + "/"):
                return mount, ref[len(prefix) + 1:]
        return None

    def _split(self, request: Request) -> tuple[Mount, str]:
        """Find the mount holding the ref (cached) and the path below it."""
        ref = request.ref.strip("/")
        known = self._known(ref)
        if known is not None:
            return known
        with self._mount_lookup:
            known = self._known(ref)  # another thread may have looked it up meanwhile
            return known if known is not None else self._look_up(request, ref)

    def _look_up(self, request: Request, ref: str) -> tuple[Mount, str]:
        """Ask the server which mount holds `ref` (under `_mount_lookup`)."""
        try:
            info = self._vault.call("mount_info", request, lambda: self._vault.hvac.adapter.get(
                f"/v1/sys/internal/ui/mounts/{ref}"))["data"]
            options = info.get("options") or {}
            mount = Mount(info["path"].strip("/"), str(info.get("type")), int(options.get("version") or 1))
        except AccessDenied as exc:
            if not self._vault.tokens.in_use():
                raise  # no token yet: nothing learnt about the mount
            # The lookup is refused (a policy without any grant on the path, or a token refused
            # everywhere). A write is another engine's; for a read assume the first segment is a KV
            # v2 mount, as `vault kv get` does, and keep that only once a read through it works.
            if request.params is not None:
                return Mount(ref.split("/", 1)[0], "unknown", guessed=True), ref.split("/", 1)[-1]
            mount = Mount(ref.split("/", 1)[0], "kv", 2, guessed=True)
            log.debug("%s: mount lookup refused (%s); assuming %s/ is KV v2", self.name, exc.message, mount.path)
            return mount, ref.split("/", 1)[-1]
        self._mounts = {**self._mounts, mount.path: mount}
        if not ref.startswith(mount.path + "/"):
            raise SecretNotFound(f"ref names the mount {mount.path}/ but no secret in it")
        return mount, ref[len(mount.path) + 1:]
