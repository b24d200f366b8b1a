"""A faithful, in-process Azure Key Vault (secrets) and Microsoft Entra ID server, over TLS.

What it owns: the wire behaviour the real SDK (azure-keyvault-secrets 4.12, azure-identity 1.27)
depends on, measured against the real service and its REST reference:
- every vault request without a valid bearer token gets `401` and a `WWW-Authenticate` challenge
  naming the tenant and the resource `https://vault.azure.net`; the SDK's first request to a vault
  goes out without a token (and without its body) to elicit it;
- `GET /secrets/{name}/` (latest; note the slash) and `/secrets/{name}/{version}`, `PUT
  /secrets/{name}`, `PATCH /secrets/{name}/{version}`, `GET /secrets?maxresults=N` (ids *without*
  the version, as on real Key Vault), `GET /secrets/{name}/versions`; every `id` is built from the
  Host header; `nextLink` is absolute; times are Unix integers; any `api-version` is accepted;
- errors: 404 `SecretNotFound`, 403 `Forbidden` with innererror `SecretDisabled` / `AccessDenied`,
  429 `Throttled` with `Retry-After`, 5xx with a JSON body, 400 `BadParameter`;
- identity: OIDC discovery and the v2.0 token endpoint (client secret, or a federated
  `client_assertion` for workload identity), and the App Service managed-identity endpoint
  (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`) on a plain-HTTP loopback port;
- a CONNECT proxy (for `HTTPS_PROXY`) that sends every host to the TLS port, so the client keeps
  its production defaults (real `*.vault.azure.net` names, challenge-resource verification).

It never reaches the network: the proxy connects only to this server.
"""

from __future__ import annotations

import json
import secrets
import select
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import trustme

VAULT_RESOURCE = "https://vault.azure.net"
VAULT_SCOPE = VAULT_RESOURCE + "/.default"
LOGIN_HOST = "login.microsoftonline.com"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str] | None
    created: int
    updated: int
    enabled: bool = True
    exp: int | None = None
    nbf: int | None = None


@dataclass
class TokenRequest:
    """One token issued (or refused) by the identity endpoints; what the tests observe."""

    kind: str  # client_secret | workload_identity | managed_identity
    client_id: str | None
    scope: str
    granted: bool


@dataclass
class Fault:
    status: int
    count: int
    retry_after: int | None = None


@dataclass
class VaultState:
    tenant_id: str
    #: vault host -> lower-case name -> versions (each vault host is its own store)
    vaults: dict[str, dict[str, list[SecretVersion]]] = field(default_factory=dict)
    #: (vault host, lower-case name) -> the name as first written
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)  # token -> (expires_at, subject)
    denied: set[str] = field(default_factory=set)  # lower-case names no identity may read
    list_denied: bool = False  # no identity has the secrets/list permission
    faults: list[Fault] = field(default_factory=list)
    #: (vault host, method, path, status) of every vault request, in order
    requests: list[tuple[str, str, str, int]] = field(default_factory=list)
    requests_lock: threading.Lock = field(default_factory=threading.Lock)
    token_requests: list[TokenRequest] = field(default_factory=list)
    #: client id -> client secret
    clients: dict[str, str] = field(default_factory=dict)
    #: client id -> the federated token (the AKS projected service-account token) it accepts
    federated: dict[str, str] = field(default_factory=dict)
    identity_header: str = ""
    managed_identity_client_ids: set[str] = field(default_factory=set)
    token_lifetime_seconds: int = 3600
    #: added to every vault response, to stand for a real network round trip (benchmarks)
    latency_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeKeyVault:
    """The server: a TLS port (vault + login), a plain loopback port (managed identity), a proxy."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(
            "*.vault.azure.net", LOGIN_HOST, "login.microsoftonline.us", "localhost", "127.0.0.1"
        )
        self.state = VaultState(tenant_id=str(uuid.uuid4()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        self._tls = _Server(("127.0.0.1", 0), _Handler, self.state, context)
        self._plain = _Server(("127.0.0.1", 0), _Handler, self.state)
        self._proxy = _ConnectProxy(("127.0.0.1", 0), self._tls.server_address[1])
        servers: list[socketserver.BaseServer] = [self._tls, self._plain, self._proxy]
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers
        ]
        for thread in self._threads:
            thread.start()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def tenant_id(self) -> str:
        return self.state.tenant_id

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._plain.server_address[1]}/msi/token"

    @property
    def connect_hosts(self) -> list[str]:
        """Hosts clients asked the proxy to CONNECT to, in order."""
        return list(self._proxy.hosts)

    def write_ca(self, path: str) -> str:
        self.ca.cert_pem.write_to_path(path)
        return path

    # -- identities ------------------------------------------------------------------------------

    def add_client(self, client_id: str | None = None) -> tuple[str, str]:
        """Register an app with a client secret; return (client_id, secret)."""
        client_id = client_id or str(uuid.uuid4())
        secret = "cs~" + secrets.token_urlsafe(24)
        self.state.clients[client_id] = secret
        return client_id, secret

    def add_federated(self, client_id: str | None = None) -> tuple[str, str]:
        """Register an app trusting a federated token; return (client_id, token)."""
        client_id = client_id or str(uuid.uuid4())
        token = "eyJfake." + secrets.token_urlsafe(32) + ".sig"
        self.state.federated[client_id] = token
        return client_id, token

    def enable_managed_identity(self, client_id: str | None = None) -> str:
        """Accept managed-identity requests (optionally for one user-assigned client id)."""
        if not self.state.identity_header:
            self.state.identity_header = secrets.token_hex(16)
        if client_id:
            self.state.managed_identity_client_ids.add(client_id)
        return self.state.identity_header

    def issue_token(self, subject: str = "test") -> str:
        """A vault token minted directly (for backends that write without an SDK credential)."""
        return _mint(self.state, subject)

    def credentials(self) -> list[str]:
        """Every secret the server knows: client secrets, federated tokens, access tokens."""
        state = self.state
        with state.lock:
            return [*state.clients.values(), *state.federated.values(), *state.tokens, state.identity_header]

    # -- vault contents and behaviour --------------------------------------------------------------

    def set_secret(self, vault: str, name: str, value: str, content_type: str | None = None, *,
                   age_seconds: int = 0) -> str:
        """Write a version directly (as another writer would); return its version id."""
        with self.state.lock:
            return _put(self.state, _host(vault), name, value, content_type, None, None, age_seconds).version

    def versions(self, vault: str, name: str) -> list[SecretVersion]:
        with self.state.lock:
            return list(self.state.vaults.get(_host(vault), {}).get(name.lower(), []))

    def update(self, vault: str, name: str, **attributes: Any) -> None:
        """Change attributes (enabled, exp, nbf) of the current version, bumping `updated`."""
        with self.state.lock:
            current = self.state.vaults[_host(vault)][name.lower()][-1]
            for key, value in attributes.items():
                setattr(current, key, value)
            current.updated = int(time.time())

    def deny(self, name: str) -> None:
        """The caller's identity has no `get` permission on this secret."""
        self.state.denied.add(name.lower())

    def fail_next(self, count: int, status: int = 429, retry_after: int | None = None) -> None:
        """The next `count` authorised vault requests fail with `status` (429: Throttled)."""
        with self.state.lock:
            self.state.faults.append(Fault(status, count, retry_after))

    def requests(self, vault: str | None = None) -> list[tuple[str, str, int]]:
        """(method, path, status) of the vault requests so far, optionally of one vault."""
        with self.state.requests_lock:
            return [(m, p, s) for h, m, p, s in self.state.requests if vault is None or h == _host(vault)]

    def token_requests(self) -> list[TokenRequest]:
        with self.state.lock:
            return list(self.state.token_requests)

    def close(self) -> None:
        for server in (self._tls, self._plain, self._proxy):
            server.shutdown()
            server.server_close()


# -- HTTP -------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], state: VaultState,
                 tls: ssl.SSLContext | None = None):
        self.state = state
        self.tls = tls
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, never in the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that drop a kept-alive TLS connection are normal


def _mint(state: VaultState, subject: str) -> str:
    token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(32)
    with state.lock:
        state.tokens[token] = (time.time() + state.token_lifetime_seconds, subject)
    return token


def _new_version() -> str:
    return uuid.uuid4().hex


def _host(vault: str) -> str:
    """`https://x.vault.azure.net[:443]/` or `x.vault.azure.net` -> `x.vault.azure.net`."""
    return urlsplit(vault if "//" in vault else "//" + vault).hostname or vault


def _put(state: VaultState, vault: str, name: str, value: str, content_type: str | None,
         tags: dict[str, str] | None, attributes: dict[str, Any] | None, age_seconds: int = 0) -> SecretVersion:
    now = int(time.time()) - age_seconds
    attributes = attributes or {}
    version = SecretVersion(_new_version(), value, content_type, tags, now, now,
                            enabled=attributes.get("enabled", True), exp=attributes.get("exp"),
                            nbf=attributes.get("nbf"))
    state.names.setdefault((vault, name.lower()), name)
    state.vaults.setdefault(vault, {}).setdefault(name.lower(), []).append(version)
    return version


def _attributes(v: SecretVersion) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": v.enabled, "created": v.created, "updated": v.updated,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}
    if v.exp is not None:
        out["exp"] = v.exp
    if v.nbf is not None:
        out["nbf"] = v.nbf
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't wait for an ACK
    server: _Server
    #: this request is to a vault, so its answer is recorded in `state.requests`
    vault_request = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # every verb goes through one dispatcher
    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    @property
    def state(self) -> VaultState:
        return self.server.state

    def _dispatch(self) -> None:
        self.vault_request = False  # a kept-alive connection's next request starts afresh
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.url = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(self.url.query).items()}
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        self.host = self.headers.get("Host") or ""
        self.vault = host
        self.store = self.state.vaults.setdefault(host, {}) if host.endswith(".vault.azure.net") else {}
        if self.url.path == "/msi/token":
            self._managed_identity()
        elif host.endswith(".vault.azure.net"):
            self._vault()
        elif host.startswith("login."):
            self._login()
        else:
            self._json(404, {"error": {"code": "NotFound", "message": "unknown host"}})

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        if self.vault_request:
            # Recorded before the answer goes out: a client that has its answer finds it counted.
            # (Its own lock: the vault handlers answer while holding `state.lock`.)
            with self.state.requests_lock:
                self.state.requests.append((self.vault, self.command, self.url.path, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    # -- identity ------------------------------------------------------------------------------------

    def _login(self) -> None:
        parts = self.url.path.strip("/").split("/")
        authority = f"https://{self.host}/{parts[0]}"
        if self.command == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._json(200, {
                "issuer": f"https://{self.host}/{parts[0]}/v2.0",
                "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
                "token_endpoint": f"{authority}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{authority}/oauth2/v2.0/devicecode",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "EU",
            })
        elif self.command == "GET" and parts == ["common", "discovery", "instance"]:
            # MSAL asks for instance metadata when it handles an error response
            self._json(200, {
                "tenant_discovery_endpoint": f"https://{self.host}/common/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": self.host, "preferred_cache": self.host,
                              "aliases": [self.host]}],
            })
        elif self.command == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
            self._token(parts[0])
        else:
            self._json(404, {"error": "not_found", "error_description": "AADSTS90002: unknown endpoint"})

    def _token(self, tenant: str) -> None:
        form = {k: v[0] for k, v in parse_qs(self.body.decode()).items()}
        client_id = form.get("client_id")
        scope = form.get("scope", "")
        if "client_assertion" in form:
            kind = "workload_identity"
            ok = client_id in self.state.federated and self.state.federated[client_id] == form["client_assertion"]
        else:
            kind = "client_secret"
            ok = client_id in self.state.clients and self.state.clients[client_id] == form.get("client_secret")
        ok = ok and tenant == self.state.tenant_id and form.get("grant_type") == "client_credentials"
        with self.state.lock:
            self.state.token_requests.append(TokenRequest(kind, client_id, scope, ok))
        if not ok:
            self._json(401, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret provided.",
                             "error_codes": [7000215]})
            return
        token = _mint(self.state, f"app:{client_id}")
        lifetime = self.state.token_lifetime_seconds
        self._json(200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                         "access_token": token})

    def _managed_identity(self) -> None:
        client_id = self.query.get("client_id")
        ok = (bool(self.state.identity_header)
              and self.headers.get("X-IDENTITY-HEADER") == self.state.identity_header
              and self.query.get("api-version") == "2019-08-01"
              and (client_id is None or client_id in self.state.managed_identity_client_ids))
        resource = self.query.get("resource", "")
        with self.state.lock:
            self.state.token_requests.append(TokenRequest("managed_identity", client_id, resource, ok))
        if not ok:
            self._json(400, {"statusCode": 400, "message": "No managed identity matches the request"})
            return
        token = _mint(self.state, f"msi:{client_id or 'system'}")
        expires_on = int(time.time()) + self.state.token_lifetime_seconds
        self._json(200, {"access_token": token, "expires_on": str(expires_on), "resource": resource,
                         "token_type": "Bearer", "client_id": client_id or "system"})

    # -- vault ---------------------------------------------------------------------------------------

    def _vault(self) -> None:
        if self.state.latency_seconds:
            time.sleep(self.state.latency_seconds)
        self.vault_request = True
        self._vault_inner()

    def _challenge(self) -> int:
        challenge = (f'Bearer authorization="https://{LOGIN_HOST}/{self.state.tenant_id}", '
                     f'resource="{VAULT_RESOURCE}"')
        self._json(401, {"error": {"code": "Unauthorized",
                                   "message": "AKV10000: Request is missing a Bearer or PoP token."}},
                   {"WWW-Authenticate": challenge})
        return 401

    def _error(self, status: int, code: str, message: str, inner: str | None = None,
               headers: dict[str, str] | None = None) -> int:
        error: dict[str, Any] = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        self._json(status, {"error": error}, headers)
        return status

    def _vault_inner(self) -> int:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return self._challenge()
        with self.state.lock:
            entry = self.state.tokens.get(auth[len("Bearer "):])
        if entry is None or entry[0] <= time.time():
            return self._challenge()
        with self.state.lock:
            fault = self.state.faults[0] if self.state.faults else None
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.state.faults.pop(0)
        if fault is not None:
            if fault.status == 429:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                return self._error(429, "Throttled", "Request was not processed because too many requests "
                                   "were received. Reason: VaultRequestTypeLimitReached", headers=headers)
            return self._error(fault.status, "InternalServerError", "Service unavailable, try again later.",
                               headers={"Retry-After": str(fault.retry_after)} if fault.retry_after else None)
        parts = [p for p in self.url.path.split("/") if p]
        if not parts or parts[0] != "secrets":
            return self._error(404, "NotFound", "unknown path")
        with self.state.lock:
            if len(parts) == 1 and self.command == "GET":
                if self.state.list_denied:
                    return self._error(403, "Forbidden", "The user, group or application 'appid=test' does not "
                                       "have secrets list permission on key vault 'fake'.", "AccessDenied")
                return self._list(None)
            name = parts[1]
            if not (0 < len(name) <= 127 and set(name) <= _NAME_CHARS):
                return self._error(400, "BadParameter", "The request URI contains an invalid name: "
                                   + quote(name[:40]))
            if len(parts) == 2 and self.command == "PUT":
                return self._set(name)
            if len(parts) == 3 and parts[2] == "versions" and self.command == "GET":
                return self._list(name)
            if len(parts) in (2, 3) and self.command in ("GET", "PATCH"):
                return self._get(name, parts[2] if len(parts) == 3 else None)
        return self._error(405, "MethodNotAllowed", "method not allowed")

    def _bundle(self, name: str, v: SecretVersion, *, value: bool) -> dict[str, Any]:
        stored_name = self.state.names[self.vault, name.lower()]
        out: dict[str, Any] = {"id": f"https://{self.host}/secrets/{stored_name}/{v.version}",
                               "attributes": _attributes(v)}
        if value:
            out["value"] = v.value
        if v.content_type is not None:
            out["contentType"] = v.content_type
        if v.tags:
            out["tags"] = v.tags
        return out

    def _set(self, name: str) -> int:
        try:
            body = json.loads(self.body)
            value = body["value"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, "BadParameter", "Property value is required.")
        v = _put(self.state, self.vault, name, value, body.get("contentType"), body.get("tags"), body.get("attributes"))
        self._json(200, self._bundle(name, v, value=True))
        return 200

    def _get(self, name: str, version: str | None) -> int:
        versions = self.store.get(name.lower())
        if name.lower() in self.state.denied:
            return self._error(403, "Forbidden", "The user, group or application 'appid=test' does not have "
                               "secrets get permission on key vault 'fake'.", "AccessDenied")
        found = None
        if versions:
            found = versions[-1] if version is None else next(
                (v for v in versions if v.version == version.lower()), None)
        if found is None:
            what = name if version is None else f"{name}/{version}"
            return self._error(404, "SecretNotFound",
                               f"A secret with (name/id) {what} was not found in this key vault. If you "
                               "recently deleted this secret you may be able to recover it using the correct "
                               "recovery command.")
        if self.command == "PATCH":
            body = json.loads(self.body or b"{}")
            for key in ("enabled", "exp", "nbf"):
                if key in (body.get("attributes") or {}):
                    setattr(found, key, body["attributes"][key])
            if "contentType" in body:
                found.content_type = body["contentType"]
            if "tags" in body:
                found.tags = body["tags"]
            found.updated = int(time.time())
            self._json(200, self._bundle(name, found, value=False))
            return 200
        if not found.enabled:
            return self._error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                               "SecretDisabled")
        self._json(200, self._bundle(name, found, value=True))
        return 200

    def _list(self, name: str | None) -> int:
        try:
            page_size = int(self.query.get("maxresults", "25"))
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= 25:
            return self._error(400, "BadParameter", "invalid maxresults: must be between 1 and 25")
        skip = int(self.query.get("$skiptoken", "0") or 0)
        if name is None:
            # The vault listing has the base id (no version) and the *current* version's attributes.
            rows = [(n, vs[-1]) for n, vs in sorted(self.store.items())]
            items = []
            for n, v in rows:
                item = self._bundle(n, v, value=False)
                item["id"] = item["id"].rsplit("/", 1)[0]
                items.append(item)
        else:
            versions = self.store.get(name.lower())
            if not versions:
                return self._error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found.")
            items = [self._bundle(name, v, value=False) for v in versions]
        page = items[skip:skip + page_size]
        next_link = None
        if skip + page_size < len(items):
            api = self.query.get("api-version", "")
            next_link = (f"https://{self.host}{self.url.path}?api-version={api}&$skiptoken={skip + page_size}"
                         f"&maxresults={page_size}")
        self._json(200, {"value": page, "nextLink": next_link})
        return 200


# -- CONNECT proxy ----------------------------------------------------------------------------------


class _ConnectHandler(socketserver.BaseRequestHandler):
    server: _ConnectProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.hosts.append(line[1].rsplit(":", 1)[0])
        upstream = socket.create_connection(("127.0.0.1", self.server.target_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for _ in _pump(client, upstream):
            pass
        upstream.close()


def _pump(a: socket.socket, b: socket.socket) -> Iterator[None]:
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 30)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)
        yield


class _ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], target_port: int) -> None:
        self.target_port = target_port
        self.hosts: list[str] = []
        super().__init__(address, _ConnectHandler)
