"""Vault/OpenBao authentication: the config models of each method, login, and token renewal.

Tokens are renewed when a third of their TTL is left; when renewal fails the bridge logs in
again (Vault Agent's auto-auth behaves the same). No token, secret id or JWT is ever logged or
put in a message or repr (they are held as SecretStr or read from files when needed).

Vault revokes a token's leases when the token ends, so each token's `TokenLife` says when it
will end for sure, as soon as that is known: a leased value lives no longer than its token.
After a login, a renewable token is renewed once as far as it goes (its max TTL): that tells its
end, and keeps leases minted with it alive across a restart of the bridge until then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from bridge.errors import AccessDenied, Unavailable
from bridge.provider_rules import read_credential

log = logging.getLogger("secrets_bridge.providers.vault")

K8S_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: asked of a renewal to learn a token's max TTL (Vault grants at most what is left of it)
_AS_LONG_AS_ALLOWED = 10 * 365 * 86400


@dataclass(eq=False)
class TokenLife:
    """When one token ends for sure (epoch seconds), or None while it is not known to end: a
    root or periodic token, or a renewable one whose max TTL is not known yet."""

    ends_at: float | None = None


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenAuth(_Auth):
    """A token from `token_file` (re-read when it changes), else $VAULT_TOKEN / $BAO_TOKEN."""

    method: Literal["token"] = "token"
    token_file: Path | None = None


class AppRoleAuth(_Auth):
    method: Literal["approle"]
    role_id: SecretStr | None = None
    role_id_file: Path | None = None
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    mount: str = "approle"

    @model_validator(mode="after")
    def _one_each(self) -> AppRoleAuth:
        if (self.role_id is None) == (self.role_id_file is None):
            raise ValueError("give one of role_id or role_id_file")
        if self.secret_id is not None and self.secret_id_file is not None:
            raise ValueError("give secret_id or secret_id_file, not both")
        return self


class JwtAuth(_Auth):
    method: Literal["jwt"]
    role: str
    jwt_file: Path
    mount: str = "jwt"


class KubernetesAuth(_Auth):
    method: Literal["kubernetes"]
    role: str
    jwt_file: Path = K8S_TOKEN_PATH
    mount: str = "kubernetes"


AuthConfig = Annotated[TokenAuth | AppRoleAuth | JwtAuth | KubernetesAuth, Field(discriminator="method")]


def _read(path: Path, what: str) -> str:
    return read_credential(path, what)


class TokenKeeper:
    """Holds the client's token: logs in, renews before expiry, logs in again when renewal fails.

    Safe to share between threads (the provider fetches on a pool): one thread at a time checks,
    renews or replaces the token, and the others wait and then use the token it left."""

    def __init__(self, client: Any, auth: TokenAuth | AppRoleAuth | JwtAuth | KubernetesAuth) -> None:
        self.client = client
        self.auth = auth
        self._expires_at: float | None = None  # monotonic; None = does not expire
        self._ttl = 0.0
        self._renewable = False
        self._token_file_stamp: tuple[int, int, int, int] | None = None
        self._logged_in = False
        self._issued_ttl = 0.0  # the TTL the token came with: a renewal granting less hit the max
        #: the life of the token in use; leases minted with it end with it
        self.life = TokenLife()
        self._lock = threading.RLock()

    def ensure(self) -> None:
        """Make sure the client carries a live token before a request."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if isinstance(self.auth, TokenAuth):
            self._use_static_token()
        elif not self._logged_in:
            self._login()
            return
        if self._expires_at is None:
            return
        left = self._expires_at - time.monotonic()
        if left > self._ttl / 3:
            return
        if self._renewable and left > 0:
            try:
                self._remember(self.client.auth.token.renew_self()["auth"])
                if self.life.ends_at is None and 0 < self._ttl < self._issued_ttl - 1:
                    self.life.ends_at = time.time() + self._ttl  # the max TTL was reached
                log.debug("vault token renewed")
                return
            except Exception:
                log.info("vault token renewal failed")
        if isinstance(self.auth, TokenAuth):
            self._expires_at = None  # a given token cannot be replaced here; the server will refuse it
            return
        log.info("logging in to vault again")
        self._login()

    def next_upkeep(self) -> float | None:
        """Seconds until `ensure` renews the token (at a third of its TTL left), None if it never expires."""
        with self._lock:
            if self._expires_at is None:
                return None
            return max(0.0, self._expires_at - self._ttl / 3 - time.monotonic())

    def in_use(self) -> bool:
        """A token has been obtained (logged in, or taken from the file or environment)."""
        return self._logged_in or self._token_file_stamp is not None

    def token(self) -> str | None:
        """The token requests carry now (to say which one was refused, to `invalidate`)."""
        return self.client.token  # type: ignore[no-any-return]

    def invalidate(self, refused: str | None = None) -> None:
        """The server refused the token: log in again before the next request. Given the token
        that was `refused`, only while it is still the one in use: of several threads refused
        together, the first logs in again and the rest use its new token."""
        with self._lock:
            if refused is not None and refused != self.client.token:
                return
            self._logged_in = False
            self._token_file_stamp = None

    def login(self) -> None:
        with self._lock:
            self._login()

    def _login(self) -> None:
        from hvac import exceptions  # the provider module imports hvac first, with its extra hint

        auth = self.auth
        try:
            if isinstance(auth, AppRoleAuth):
                role_id = auth.role_id.get_secret_value() if auth.role_id else _read(auth.role_id_file, "role_id_file")  # type: ignore[arg-type]
                secret_id = (auth.secret_id.get_secret_value() if auth.secret_id
                             else _read(auth.secret_id_file, "secret_id_file") if auth.secret_id_file else None)
                result = self.client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=auth.mount)
            elif isinstance(auth, JwtAuth):
                jwt = _read(auth.jwt_file, "jwt_file")
                result = self.client.auth.jwt.jwt_login(role=auth.role, jwt=jwt, path=auth.mount)
            elif isinstance(auth, KubernetesAuth):
                jwt = _read(auth.jwt_file, "jwt_file")
                result = self.client.auth.kubernetes.login(role=auth.role, jwt=jwt, mount_point=auth.mount)
            else:
                self._use_static_token()
                return
        except exceptions.VaultError as exc:
            reason = " ".join(", ".join(str(e) for e in exc.errors or []).split()) or type(exc).__name__
            if isinstance(exc, exceptions.RateLimitExceeded | exceptions.InternalServerError | exceptions.VaultDown
                          | exceptions.BadGateway | exceptions.UnexpectedError):
                # throttled or down: not the credentials' fault, so back off instead of retrying slowly
                raise Unavailable(f"{auth.method} login: server unavailable: {reason}") from None
            raise AccessDenied(f"{auth.method} login failed: {reason}") from None
        self._retire()
        self._remember(result["auth"])
        self._issued_ttl = self._ttl
        self._learn_end(extend=True)
        self._logged_in = True
        log.info("logged in to vault with %s (token ttl %ds)", auth.method, int(self._ttl))

    def _remember(self, auth: dict[str, Any]) -> None:
        self.client.token = auth["client_token"]
        self._ttl = float(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable"))
        self._expires_at = time.monotonic() + self._ttl if self._ttl > 0 else None

    def _use_static_token(self) -> None:
        auth = self.auth
        if isinstance(auth, TokenAuth) and auth.token_file is not None:
            try:
                # not the mtime alone: a file rewritten with its mtime kept (cp -p) moves the ctime
                info = os.stat(auth.token_file)
                stamp = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_size)
            except OSError as exc:
                raise AccessDenied(f"cannot read token_file {auth.token_file}: {exc.strerror}") from None
            if stamp != self._token_file_stamp:
                self._retire()
                self.client.token = _read(auth.token_file, "token_file")
                self._token_file_stamp = stamp
                self._learn_ttl()
            return
        if self._logged_in:
            return
        token = os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN")
        if not token:
            raise AccessDenied("no token: set auth.token_file, VAULT_TOKEN or BAO_TOKEN, or another auth method")
        self._retire()
        self.client.token = token
        self._logged_in = True
        self._learn_ttl()

    def _learn_ttl(self) -> None:
        """A given token may be renewable: learn its TTL so it is renewed like a login's."""
        try:
            data = self.client.auth.token.lookup_self()["data"]
        except Exception:
            self._expires_at = None  # the request itself will report a refused token
            return
        self._remember({"client_token": self.client.token, "lease_duration": data.get("ttl"),
                        "renewable": data.get("renewable")})
        self._issued_ttl = float(data.get("creation_ttl") or self._ttl)
        if data.get("period"):
            return  # periodic: lives as long as it is renewed
        self._learn_end(extend=False)  # a given token is someone else's: not extended here

    def _retire(self) -> None:
        """The token in use is being replaced: nobody renews it any more, so it ends at its expiry."""
        if self.life.ends_at is None and self._expires_at is not None:
            self.life.ends_at = time.time() + max(0.0, self._expires_at - time.monotonic())
        self.life = TokenLife()
        self._expires_at = None

    def _learn_end(self, *, extend: bool) -> None:
        """Learn when the token ends: a non-renewable one at its TTL; a renewable one (if `extend`)
        by renewing it as far as its max TTL allows, unless it is periodic."""
        if self._ttl <= 0:
            return  # does not expire (a root token)
        if not self._renewable:
            self.life.ends_at = time.time() + self._ttl
            return
        if not extend:
            return
        try:
            if self.client.auth.token.lookup_self()["data"].get("period"):
                return  # periodic: lives as long as it is renewed
            self._remember(self.client.auth.token.renew_self(increment=_AS_LONG_AS_ALLOWED)["auth"])
        except Exception:
            log.debug("vault token: max TTL not learnt")  # renewals will tell it later
            return
        if 0 < self._ttl < _AS_LONG_AS_ALLOWED:
            self.life.ends_at = time.time() + self._ttl
