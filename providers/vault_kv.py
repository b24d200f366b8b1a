"""KV v1 and v2 secrets: reads, the cheap metadata check, and `version: previous`.

KV v2's version number starts again at 1 when a secret is deleted (metadata and all) and written
anew, so a number alone does not identify a version: each fetch remembers the `created_time` of
the version it returned, and the change check answers None ("cannot tell; fetch and compare")
when the same number now carries another `created_time`.

Common policies grant only `<mount>/data/*`. A refused metadata read is taken for a policy only
once a data read in that mount works with the same token (a revoked token is refused everywhere;
a token replaced in `token_file` since the refusal proves nothing about the old one's policy), and
even then it is probed again every `metadata_reprobe_seconds`, or at once when the token changes,
so a widened policy or a new token brings the cheap check back. A token is told apart by its
`TokenLife`, which the keeper replaces with each token (no token is kept here).

Reads run on the provider's pool: the bookkeeping of refused metadata is one
`bridge.provider_rules.Fallback` per mount (thread-safe), with `confirm` for the rule above.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from bridge.errors import AccessDenied, SecretNotFound
from bridge.provider import PREVIOUS, Fetched, Request
from bridge.provider_rules import Fallback
from providers.vault_client import VaultClient
from providers.vault_leases import encode

log = logging.getLogger("secrets_bridge.providers.vault")



@dataclass(frozen=True)
class Mount:
    path: str  # without trailing slash
    type: str  # the engine: kv, pki, database, ...
    kv_version: int = 0  # 1 or 2 for KV mounts
    #: not looked up (the lookup was refused) but assumed; kept only once a read through it works
    guessed: bool = False

    @property
    def is_kv(self) -> bool:
        return self.type in ("kv", "generic")


def _unit(request: Request) -> tuple[str, str | None]:
    return request.ref.strip("/"), request.version


class KeyValue:
    """Reads KV secrets through the client; remembers what each fetch unit last returned."""

    #: how long a mount whose metadata the policy refuses is checked by reading values instead
    metadata_reprobe_seconds = 600.0

    def __init__(self, client: VaultClient, name: str) -> None:
        self._client = client
        self.name = name
        self._created: dict[tuple[str, str | None], tuple[str, str]] = {}  # unit -> (number, created_time)
        self._metadata_reads: dict[str, Fallback] = {}  # mount -> its metadata read's fallback
        self._lock = threading.Lock()

    def fetch(self, mount: Mount, path: str, request: Request) -> Fetched:
        kv = self._client.hvac.secrets.kv
        if mount.kv_version == 1:
            if request.version is not None:
                raise SecretNotFound("KV v1 has no versions; remove `version`")
            data = self._client.call("read", request, lambda: kv.v1.read_secret(
                path=path, mount_point=mount.path))["data"]
            return Fetched(encode(data), None)
        version = request.version
        if version == PREVIOUS:
            version = _previous_of(self._metadata_for_previous(mount, path, request))
        elif version is not None and not version.isdigit():
            raise SecretNotFound("a KV v2 version is a whole number or `previous`")
        response = self._client.call("read", request, lambda: kv.v2.read_secret_version(
            path=path, mount_point=mount.path, version=version, raise_on_deleted_version=True))
        body = response["data"]
        if body.get("data") is None:  # deleted or destroyed version
            raise SecretNotFound("version deleted or destroyed")
        number = str(body["metadata"]["version"])
        self._created[_unit(request)] = (number, str(body["metadata"].get("created_time") or ""))
        self._data_read_works(mount)
        return Fetched(encode(body["data"]), number)

    def current_version(self, mount: Mount, path: str, request: Request) -> str | None:
        """The version `request` (latest or `previous`) points at now; None = fetch and compare."""
        if mount.kv_version == 1:
            return None  # no versions: the engine fetches and compares content
        if request.version == PREVIOUS:
            pinned = self._metadata_for_previous(mount, path, request)
            return self._checked(request, _previous_of(pinned), pinned)
        latest = self._metadata(mount, path, request)
        if latest is None:
            return None
        return self._checked(request, str(latest["current_version"]), latest)

    # -- internals -------------------------------------------------------------------------

    def _checked(self, request: Request, number: str, meta: dict[str, Any]) -> str | None:
        """`number`, unless the unit last fetched a version of that number created at another time
        (the secret was deleted and written again): then None, so the engine fetches and compares."""
        seen = self._created.get(_unit(request))
        created = str(((meta.get("versions") or {}).get(number) or {}).get("created_time") or "")
        if seen is not None and seen[0] == number and created and seen[1] != created:
            return None
        return number

    def _metadata(self, mount: Mount, path: str, request: Request) -> dict[str, Any] | None:
        """The secret's metadata, or None while the policy is known to refuse it to this token."""
        fallback, token = self._fallback(mount), self._token()
        if not fallback.allowed(token):
            return None
        try:
            meta: dict[str, Any] = self._client.call("read_metadata", request, lambda: (
                self._client.hvac.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount.path)))["data"]
        except AccessDenied as exc:
            fallback.refused(exc, token)  # suspected until a data read with this token works
            return None
        fallback.worked()
        return meta

    def _fallback(self, mount: Mount) -> Fallback:
        with self._lock:
            fallback = self._metadata_reads.get(mount.path)
            if fallback is None:
                fallback = self._metadata_reads[mount.path] = Fallback(
                    self.name, f"read of {mount.path}/metadata/*", logger=log, confirm=True,
                    instead="checking for changes by reading values (grant it to check versions cheaply)",
                    reprobe_seconds=self.metadata_reprobe_seconds)
        return fallback

    def _metadata_for_previous(self, mount: Mount, path: str, request: Request) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = self._client.call("read_metadata", request, lambda: (
                self._client.hvac.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount.path)))["data"]
        except AccessDenied as exc:
            raise AccessDenied(f"`version: previous` needs read access to {mount.path}/metadata/* "
                               f"({exc.message})") from None
        return meta

    def _data_read_works(self, mount: Mount) -> None:
        """A data read worked: a metadata refusal to this token was the policy's."""
        fallback = self._metadata_reads.get(mount.path)
        if fallback is not None:
            fallback.confirmed(self._token())

    def _token(self) -> object:
        """The token in use, told apart from others by its life (replaced with every new token)."""
        return self._client.tokens.life


def _previous_of(meta: dict[str, Any]) -> str:
    """The newest live version before the current one (deleted and destroyed ones are skipped)."""
    current = int(meta["current_version"])
    live = [int(number) for number, info in (meta.get("versions") or {}).items()
            if int(number) < current and not (info or {}).get("deletion_time") and not (info or {}).get("destroyed")]
    if not live:
        raise SecretNotFound(f"no live version before the current one ({current})")
    return str(max(live))
