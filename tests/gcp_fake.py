"""A faithful, in-process Google Cloud Secret Manager (v1 REST) with Google's token endpoints, over TLS.

What it owns: the wire behaviour google-cloud-secret-manager 2.x (REST transport) and google-auth
depend on, as the v1 REST reference and the real service give it:
- every Secret Manager request needs `Authorization: Bearer <token>` (401 UNAUTHENTICATED without);
- `POST /v1/projects/{p}/secrets?secretId=` (create), `POST .../secrets/{s}:addVersion` (the
  payload's `dataCrc32c` is checked), `GET .../secrets/{s}`, `GET .../secrets/{s}/versions`
  (newest first; `pageSize`, `pageToken`, `filter=state:ENABLED`), `GET .../versions/{v}` and
  `GET .../versions/{v}:access` (`{name, payload: {data (base64), dataCrc32c}}`), `POST
  .../versions/{v}:disable|:enable|:destroy`; `{v}` is a number or `latest` (the newest version,
  whatever its state); names come back with the project *number*, as on the real service; enums
  are numbers when the client asks for `$alt=json;enum-encoding=int` (the GAPIC REST client does);
- errors as `{"error": {"code", "message", "status"}}`: 404 NOT_FOUND, 403 PERMISSION_DENIED,
  400 FAILED_PRECONDITION (a disabled or destroyed version), 400 INVALID_ARGUMENT, 429
  RESOURCE_EXHAUSTED with `Retry-After`, 503 UNAVAILABLE;
- identity: the OAuth token endpoint (`oauth2.googleapis.com/token`, the service-account JWT
  grant, its RS256 signature verified with PyJWT against the key the fake issued), the STS token
  exchange (`sts.googleapis.com/v1/token`, for `external_account` files), Cloud Resource Manager's
  project lookup (which google-auth makes for an external account), and the GCE metadata server
  (plain HTTP on loopback, answering only with `Metadata-Flavor: Google`, and only once enabled);
- a CONNECT proxy (for `HTTPS_PROXY`) that sends every host to the TLS port, so clients keep their
  production endpoints.

It never reaches the network: the proxy connects only to this server.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google_crc32c
import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.azure_fake import _ConnectProxy, _Server

HOSTS = ("secretmanager.googleapis.com", "oauth2.googleapis.com", "sts.googleapis.com",
         "cloudresourcemanager.googleapis.com")
TOKEN_URI = "https://oauth2.googleapis.com/token"
STS_URI = "https://sts.googleapis.com/v1/token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_STATES = {"ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or _STATUS.get(code, "UNKNOWN")
        self.headers = headers or {}


@dataclass
class Version:
    number: int
    data: bytes
    created: float
    state: str = "ENABLED"


@dataclass
class Fault:
    status: int
    count: int
    retry_after: int | None = None


@dataclass
class State:
    #: project id -> project number
    projects: dict[str, str] = field(default_factory=dict)
    #: (project number, secret id) -> versions, oldest first
    secrets: dict[tuple[str, str], list[Version]] = field(default_factory=dict)
    #: access token -> (expires_at, subject)
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: service-account email -> (key id, PEM public key)
    service_accounts: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: subject token -> the workload identity provider audience that trusts it
    federated: dict[str, str] = field(default_factory=dict)
    metadata_account: str | None = None
    metadata_project: str | None = None
    denied: set[str] = field(default_factory=set)  # secret ids no identity may access
    corrupt: set[str] = field(default_factory=set)  # secret ids whose access answers carry a wrong CRC32C
    faults: list[Fault] = field(default_factory=list)
    #: (method, path, status, subject) of every Secret Manager request
    requests: list[tuple[str, str, int, str]] = field(default_factory=list)
    #: (kind, subject, granted) of every token request (service_account | external_account | metadata)
    token_requests: list[tuple[str, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeSecretManager:
    """The server: a TLS port (every Google host), a plain loopback port (metadata), a proxy."""

    def __init__(self, metadata_port: int = 0) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*HOSTS, "localhost", "127.0.0.1")
        self.state = State()
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        self._tls = _Server(("127.0.0.1", 0), _Handler, self.state, context)  # type: ignore[arg-type]
        self._plain = _Server(("127.0.0.1", metadata_port), _Handler, self.state)  # type: ignore[arg-type]
        self._proxy = _ConnectProxy(("127.0.0.1", 0), self._tls.server_address[1])
        for server in (self._tls, self._plain, self._proxy):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def endpoint(self) -> str:
        """The TLS port by address, for an explicit `endpoint` (a private endpoint)."""
        return f"https://localhost:{self._tls.server_address[1]}"

    @property
    def http_endpoint(self) -> str:
        """The plain port, as an emulator would listen (no TLS)."""
        return f"http://127.0.0.1:{self._plain.server_address[1]}"

    def write_ca(self, path: str) -> str:
        self.ca.cert_pem.write_to_path(path)
        return path

    # -- identities ------------------------------------------------------------------------------

    def add_project(self, project_id: str) -> str:
        """Register a project; return its number."""
        with self.state.lock:
            return self.state.projects.setdefault(project_id, str(100000000000 + len(self.state.projects)))

    def add_service_account(self, project_id: str, name: str = "bridge") -> dict[str, str]:
        """A service-account key file's content (JSON key), its public half registered here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        email = f"{name}-{secrets.token_hex(3)}@{project_id}.iam.gserviceaccount.com"
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.state.service_accounts[email] = (key_id, public)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": project_id, "private_key_id": key_id,
                "private_key": pem, "client_email": email, "client_id": str(secrets.randbits(64)),
                "token_uri": TOKEN_URI}

    def add_federated(self, project_id: str) -> tuple[str, str]:
        """A workload identity pool provider trusting a new subject token; return (audience, token)."""
        number = self.add_project(project_id)
        audience = (f"//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
                    f"pool/providers/{secrets.token_hex(4)}")
        token = "eyJsubject." + secrets.token_urlsafe(32) + ".sig"
        self.state.federated[token] = audience
        return audience, token

    def enable_metadata(self, project_id: str, account: str = "default-sa@example.iam.gserviceaccount.com") -> None:
        """Answer as a GCE/GKE metadata server for `account` in `project_id`."""
        self.add_project(project_id)
        self.state.metadata_account, self.state.metadata_project = account, project_id

    def disable_metadata(self) -> None:
        self.state.metadata_account = self.state.metadata_project = None

    def credentials(self) -> list[str]:
        """Every secret the server knows: access tokens, subject tokens."""
        with self.state.lock:
            return [*self.state.tokens, *self.state.federated]

    # -- contents --------------------------------------------------------------------------------

    def add_version(self, project_id: str, secret_id: str, data: bytes) -> str:
        """Write a version directly (creating the secret); return its number."""
        number = self.add_project(project_id)
        with self.state.lock:
            versions = self.state.secrets.setdefault((number, secret_id), [])
            versions.append(Version(len(versions) + 1, data, time.time()))
            return str(len(versions))

    def set_state(self, project_id: str, secret_id: str, version: str, state: str) -> None:
        with self.state.lock:
            found = self.state.secrets[(self.state.projects[project_id], secret_id)][int(version) - 1]
            found.state = state
            if state == "DESTROYED":
                found.data = b""

    def fail_next(self, count: int, status: int = 429, retry_after: int | None = None) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(status, count, retry_after))

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self) -> list[tuple[str, str, int, str]]:
        with self.state.lock:
            return list(self.state.requests)

    def token_requests(self) -> list[tuple[str, str, bool]]:
        with self.state.lock:
            return list(self.state.token_requests)

    def close(self) -> None:
        for server in (self._tls, self._plain, self._proxy):
            server.shutdown()
            server.server_close()


# -- HTTP -------------------------------------------------------------------------------------------


def _mint(state: State, subject: str) -> dict[str, Any]:
    token = "ya29.fake-" + secrets.token_urlsafe(32)
    with state.lock:
        state.tokens[token] = (time.time() + 3600, subject)
    return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes: without this, Nagle and delayed ACKs add 40 ms a call
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[return-value]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        host = (self.headers.get("Host") or "").split(":")[0]
        try:
            if self.server.tls is None and not url.path.startswith("/v1/"):
                self._metadata(url.path)
            elif host == "oauth2.googleapis.com" and url.path == "/token":
                self._token(parse_qs(body.decode()))
            elif host == "sts.googleapis.com" and url.path == "/v1/token":
                self._sts(parse_qs(body.decode()))
            elif host == "cloudresourcemanager.googleapis.com":
                self._project(url.path)
            else:
                self._secret_manager(method, url.path, query, body)
        except ApiError as exc:
            self._json(exc.code, {"error": {"code": exc.code, "message": exc.message, "status": exc.status}},
                       exc.headers)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # -- identity ----------------------------------------------------------------------------------

    def _token(self, form: dict[str, list[str]]) -> None:
        assertion = (form.get("assertion") or [""])[0]
        try:
            header = jwt.get_unverified_header(assertion)
            email = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
            key_id, public = self.state.service_accounts[email]
            if header.get("kid") != key_id:
                raise KeyError(email)
            claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=TOKEN_URI, issuer=email)
            if SCOPE not in str(claims.get("scope", "")).split():
                raise jwt.InvalidTokenError("scope")
        except (KeyError, jwt.PyJWTError):
            self.state.token_requests.append(("service_account", "", False))
            raise ApiError(400, "invalid_grant") from None
        self.state.token_requests.append(("service_account", email, True))
        self._json(200, _mint(self.state, email))

    def _sts(self, form: dict[str, list[str]]) -> None:
        def one(name: str) -> str:
            return (form.get(name) or [""])[0]

        audience = self.state.federated.get(one("subject_token"))
        granted = (audience is not None and audience == one("audience")
                   and one("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange")
        self.state.token_requests.append(("external_account", one("audience"), granted))
        if not granted:
            self._json(400, {"error": "invalid_grant", "error_description": "The subject token is invalid."})
            return
        token = _mint(self.state, f"principal:{audience}")
        self._json(200, {**token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})

    def _project(self, path: str) -> None:
        number = path.rsplit("/", 1)[-1]
        ids = [pid for pid, num in self.state.projects.items() if num == number]
        if not ids or self._subject() is None:
            raise ApiError(403, "The caller does not have permission")
        self._json(200, {"projectNumber": number, "projectId": ids[0], "lifecycleState": "ACTIVE"})

    def _metadata(self, path: str) -> None:
        account, project = self.state.metadata_account, self.state.metadata_project
        if account is None or self.headers.get("Metadata-Flavor") != "Google":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        root = "/computeMetadata/v1/"
        text: Any
        if path == "/":
            text = ""
        elif path == root + "project/project-id":
            text = project
        elif path == root + "universe/universe-domain":
            text = "googleapis.com"
        elif path in (root + "instance/service-accounts/default/", root + f"instance/service-accounts/{account}/"):
            text = {"email": account, "aliases": ["default"], "scopes": [SCOPE]}
        elif path.endswith("/token") and path.startswith(root + "instance/service-accounts/"):
            self.state.token_requests.append(("metadata", account, True))
            text = _mint(self.state, account)
        else:
            raise ApiError(404, "not found")
        data = (json.dumps(text) if isinstance(text, dict) else text).encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if isinstance(text, dict) else "application/text")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _subject(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.state.lock:
            found = self.state.tokens.get(token)
        return found[1] if found and found[0] > time.time() else None

    # -- Secret Manager ----------------------------------------------------------------------------

    def _secret_manager(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        # the plain port is an emulator: it takes any caller, and records whether a token was sent
        plain = "bearer-in-clear-text" if self.headers.get("Authorization") else "anonymous"
        subject = self._subject() if self.server.tls is not None else plain
        status = 200
        try:
            if subject is None:
                raise ApiError(401, "Request had invalid authentication credentials.")
            self._fault()
            payload = _Route(self.state, query, body).run(method, path)
        except ApiError as exc:
            status = exc.code
            raise
        finally:
            with self.state.lock:
                self.state.requests.append((method, path, status, subject or ""))
        self._json(200, payload)

    def _fault(self) -> None:
        with self.state.lock:
            fault = next((f for f in self.state.faults if f.count > 0), None)
            if fault is None:
                return
            fault.count -= 1
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        message = "Quota exceeded" if fault.status == 429 else "The service is currently unavailable."
        raise ApiError(fault.status, message, headers=headers)


class _Route:
    """One Secret Manager call, on the state; returns the JSON answer or raises ApiError."""

    def __init__(self, state: State, query: dict[str, str], body: bytes) -> None:
        self.state, self.query, self.body = state, query, body
        self.int_enums = "enum-encoding=int" in query.get("$alt", "")

    def run(self, method: str, path: str) -> Any:
        parts = path.split("/")
        if len(parts) < 4 or parts[:3] != ["", "v1", "projects"]:
            raise ApiError(404, "not found")
        project = self._number(parts[3])
        rest, _, verb = "/".join(parts[4:]).partition(":")
        segments = rest.split("/")
        if method == "POST" and rest == "secrets":
            return self._create(project, self.query.get("secretId", ""))
        if len(segments) < 2 or segments[0] != "secrets":
            raise ApiError(404, "not found")
        secret = segments[1]
        if len(segments) == 2 and method == "GET" and not verb:
            return self._secret(project, secret)
        if len(segments) == 2 and method == "POST" and verb == "addVersion":
            return self._add(project, secret)
        if len(segments) == 3 and segments[2] == "versions" and method == "GET":
            return self._list(project, secret)
        if len(segments) == 4 and segments[2] == "versions":
            return self._version_call(method, verb, project, secret, segments[3])
        raise ApiError(404, "not found")

    def _number(self, project: str) -> str:
        if project.isdigit() and project in self.state.projects.values():
            return project
        number = self.state.projects.get(project)
        if number is None:
            raise ApiError(403, f"Permission denied on resource project {project}.")
        return number

    def _versions(self, project: str, secret: str) -> list[Version]:
        versions = self.state.secrets.get((project, secret))
        if versions is None:
            raise ApiError(404, f"Secret [projects/{project}/secrets/{secret}] not found or has no versions.")
        return versions

    def _create(self, project: str, secret: str) -> Any:
        if not secret or (project, secret) in self.state.secrets:
            raise ApiError(409 if secret else 400, "Secret already exists." if secret else "secretId is required",
                           status="ALREADY_EXISTS" if secret else None)
        self.state.secrets[(project, secret)] = []
        return self._secret(project, secret)

    def _secret(self, project: str, secret: str) -> Any:
        self._versions(project, secret)
        return {"name": f"projects/{project}/secrets/{secret}", "replication": {"automatic": {}},
                "createTime": _rfc3339(time.time()), "etag": '"1"'}

    def _add(self, project: str, secret: str) -> Any:
        versions = self._versions(project, secret)
        payload = json.loads(self.body or b"{}").get("payload") or {}
        data = base64.b64decode(payload.get("data", ""))
        crc = payload.get("dataCrc32c")
        if crc is not None and int(crc) != google_crc32c.value(data):
            raise ApiError(400, "Checksum mismatch: the payload's data_crc32c does not match its data.")
        with self.state.lock:
            versions.append(Version(len(versions) + 1, data, time.time()))
        return self._describe(project, secret, versions[-1])

    def _describe(self, project: str, secret: str, version: Version) -> Any:
        state: Any = _STATES[version.state] if self.int_enums else version.state
        return {"name": f"projects/{project}/secrets/{secret}/versions/{version.number}",
                "createTime": _rfc3339(version.created), "state": state, "etag": f'"{version.number}"'}

    def _list(self, project: str, secret: str) -> Any:
        versions = sorted(self._versions(project, secret), key=lambda v: -v.number)
        wanted = self.query.get("filter", "").replace("state=", "state:").removeprefix("state:").strip()
        if wanted:
            if wanted not in _STATES:
                raise ApiError(400, f"Invalid filter: {self.query['filter']}")
            versions = [v for v in versions if v.state == wanted]
        size = int(self.query.get("pageSize") or 25000)
        start = int(self.query.get("pageToken") or 0)
        page = versions[start:start + size]
        answer: dict[str, Any] = {"versions": [self._describe(project, secret, v) for v in page],
                                  "totalSize": len(versions)}
        if start + size < len(versions):
            answer["nextPageToken"] = str(start + size)
        return answer

    def _version_call(self, method: str, verb: str, project: str, secret: str, name: str) -> Any:
        if secret in self.state.denied:
            permission = "secretmanager.versions.access" if verb == "access" else "secretmanager.versions.get"
            raise ApiError(403, f"Permission '{permission}' denied for resource "
                                f"'projects/{project}/secrets/{secret}/versions/{name}' (or it may not exist).")
        version = self._find(project, secret, name)
        if method == "GET" and verb == "access":
            return self._access(project, secret, version)
        if method == "GET" and not verb:
            return self._describe(project, secret, version)
        if method == "POST" and verb in ("enable", "disable", "destroy"):
            if version.state == "DESTROYED":
                raise ApiError(400, "Secret Version is in DESTROYED state.", status="FAILED_PRECONDITION")
            version.state = {"enable": "ENABLED", "disable": "DISABLED", "destroy": "DESTROYED"}[verb]
            if verb == "destroy":
                version.data = b""
            return self._describe(project, secret, version)
        raise ApiError(404, "not found")

    def _find(self, project: str, secret: str, name: str) -> Version:
        versions = self._versions(project, secret)
        if name == "latest":
            if not versions:
                raise ApiError(404, f"Secret [projects/{project}/secrets/{secret}] not found or has no versions.")
            return versions[-1]
        if not name.isdigit() or int(name) < 1:
            raise ApiError(400, f"Invalid resource field value in the request: version '{name}'.")
        if int(name) > len(versions):
            raise ApiError(404, f"Secret Version [projects/{project}/secrets/{secret}/versions/{name}] not found.")
        return versions[int(name) - 1]

    def _access(self, project: str, secret: str, version: Version) -> Any:
        if version.state != "ENABLED":
            raise ApiError(400, f"Secret Version [projects/{project}/secrets/{secret}/versions/{version.number}] "
                                f"is in {version.state} state.", status="FAILED_PRECONDITION")
        crc = google_crc32c.value(version.data) ^ (1 if secret in self.state.corrupt else 0)
        return {"name": f"projects/{project}/secrets/{secret}/versions/{version.number}",
                "payload": {"data": base64.b64encode(version.data).decode(), "dataCrc32c": str(crc)}}
