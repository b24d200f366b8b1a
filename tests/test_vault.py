"""The Vault/OpenBao provider against a real OpenBao dev server."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.observe.metrics import registry
from bridge.provider import Fetched, Request
from providers.vault import VaultProvider, VaultSettings
from tests.conformance import ProviderConformance, read, unique_text
from tests.fault_proxy import FaultProxy
from tests.servers import free_port, venv_binary
from tests.versions import latest, latest_one

POLICY = 'path "secret/*" { capabilities = ["read", "list"] }\npath "kv1/*" { capabilities = ["read"] }'


class VaultBackend:
    """Writes through OpenBao's own API with the root token."""

    text_fields = {"key": "value"}
    binary_fields = {"key": "value", "encoding": "base64"}

    def __init__(self, openbao) -> None:
        self.openbao = openbao
        self.client = openbao.client()

    def new_ref(self) -> str:
        return f"secret/conformance/{uuid.uuid4().hex}"

    def _write(self, ref: str, data: dict) -> str:
        path = ref.removeprefix("secret/")
        result = self.client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
        return str(result["data"]["version"])

    def put(self, ref: str, value: str) -> str:
        return self._write(ref, {"value": value})

    def put_binary(self, ref: str, data: bytes) -> str:
        return self._write(ref, {"value": base64.b64encode(data).decode()})

    def credentials(self) -> list[str]:
        return [self.openbao.root_token]


def _token_file(openbao, tmp_path: Path, policy: str, **create) -> str:
    """A token with only `policy`, written to tmp_path/token; returns the token."""
    client = openbao.client()
    name = f"p{uuid.uuid4().hex[:8]}"
    client.sys.create_or_update_policy(name, policy)
    token = client.auth.token.create(policies=[name], **create)["auth"]["client_token"]
    (tmp_path / "token").write_text(token)
    return token


def _provider(openbao, **auth) -> VaultProvider:
    settings = VaultSettings(type="vault", address=openbao.address, auth=auth or {"method": "token"})
    return VaultProvider("vault", settings)


@pytest.fixture
def provider(openbao, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    p = _provider(openbao)
    yield p
    p.close()


@pytest.fixture
def backend(openbao) -> VaultBackend:
    return VaultBackend(openbao)


class ProxiedVaultBackend(VaultBackend):
    """VaultBackend whose provider reaches OpenBao through a fault proxy, so an outage can be made
    and the provider's requests counted outside the code under test."""

    def __init__(self, openbao, proxy: FaultProxy) -> None:
        super().__init__(openbao)
        self.proxy = proxy

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Every request through the proxy is answered 503 while inside."""
        self.proxy.inject({"5xx": 1.0})
        try:
            yield
        finally:
            self.proxy.heal()

    def calls(self) -> int:
        return self.proxy.requests()


class TestVaultConformance(ProviderConformance):
    """The shared provider cases, on KV v2, through a fault proxy (for the outage case)."""

    @pytest.fixture
    def fault_proxy(self, openbao) -> Iterator[FaultProxy]:
        proxy = FaultProxy(openbao.address)
        yield proxy
        proxy.close()

    @pytest.fixture
    def provider(self, openbao, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
        p = VaultProvider("vault", VaultSettings(type="vault", address=fault_proxy.url, auth={"method": "token"}))
        yield p
        p.close()

    @pytest.fixture
    def backend(self, openbao, fault_proxy: FaultProxy) -> ProxiedVaultBackend:
        return ProxiedVaultBackend(openbao, fault_proxy)


@pytest.fixture(scope="module")
def kv1(openbao) -> str:
    client = openbao.client()
    if "kv1/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    return "kv1"


def test_kv1_found_automatically(provider: VaultProvider, openbao, kv1: str) -> None:
    """A KV v1 mount is detected; the map is written as compact JSON and has no version."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="app/one", secret={"b": "2", "a": "1"},
                                                            mount_point=kv1)
    content, fetched = read(provider, "kv1/app/one", None, {})
    assert content == b'{"a":"1","b":"2"}'
    assert fetched.version is None
    assert latest(provider, ["kv1/app/one"])["kv1/app/one"] is None


def test_nested_mount_path(provider: VaultProvider, openbao) -> None:
    """A KV v2 mount with a slash in its path is found from the ref."""
    client = openbao.client()
    if "team/kv/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="team/kv", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret(path="x/y", secret={"k": "v"}, mount_point="team/kv")
    content, fetched = read(provider, "team/kv/x/y", None, {"key": "k"})
    assert (content, fetched.version) == (b"v", "1")


def test_deleted_version_pin_is_not_found(provider: VaultProvider, backend: VaultBackend) -> None:
    """A pinned version that was deleted is SecretNotFound, never an empty value."""
    ref = backend.new_ref()
    v1 = backend.put(ref, unique_text())
    backend.put(ref, unique_text())
    backend.client.secrets.kv.v2.delete_secret_versions(path=ref.removeprefix("secret/"), versions=[int(v1)])
    with pytest.raises(SecretNotFound):
        read(provider, ref, v1, backend.text_fields)


def test_missing_token_is_access_denied(openbao) -> None:
    """Without any token the provider says how to give one."""
    p = _provider(openbao)
    outcome = p.fetch_many([Request("secret/anything")])[Request("secret/anything")]
    assert isinstance(outcome, AccessDenied)
    assert "VAULT_TOKEN" in str(outcome)


def test_bad_token_is_access_denied(openbao, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token the server refuses maps to AccessDenied and the message does not carry it."""
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token-123")
    p = _provider(openbao)
    outcome = p.fetch_many([Request("secret/anything")])[Request("secret/anything")]
    assert isinstance(outcome, AccessDenied)
    assert "not-a-real-token-123" not in str(outcome) + repr(outcome)


def _approle(openbao, name: str, **role) -> tuple[str, str]:
    client = openbao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy("bridge-read", POLICY)
    client.auth.approle.create_or_update_approle(name, token_policies=["bridge-read"], **role)
    role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    return role_id, secret_id


def test_approle_login_from_files(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """AppRole with role_id_file/secret_id_file logs in and reads."""
    role_id, secret_id = _approle(openbao, "bridge")
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id + "\n")
    ref = backend.new_ref()
    value = unique_text()
    backend.put(ref, value)
    p = _provider(openbao, method="approle", role_id_file=str(tmp_path / "role-id"),
                  secret_id_file=str(tmp_path / "secret-id"))
    content, _ = read(p, ref, None, backend.text_fields)
    assert content == value.encode()
    assert secret_id not in repr(p.settings) + str(p.settings)


def test_approle_wrong_secret_id(openbao) -> None:
    """A wrong secret id is AccessDenied naming the method, not the secret id."""
    role_id, _ = _approle(openbao, "bridge")
    p = _provider(openbao, method="approle", role_id=role_id, secret_id="wrong-secret-id-xyz")
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied)
    assert "approle login failed" in str(outcome)
    assert "wrong-secret-id-xyz" not in str(outcome) + repr(p.settings)


def test_token_renewed_then_login_again(openbao, backend: VaultBackend) -> None:
    """Short-lived tokens are renewed and, past their max TTL, replaced by a new login."""
    role_id, secret_id = _approle(openbao, "short", token_ttl="2s", token_max_ttl="4s")
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = _provider(openbao, method="approle", role_id=role_id, secret_id=secret_id)
    tokens = []
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        content, _ = read(p, ref, None, backend.text_fields)
        assert content == b"v"
        tokens.append(p._client.token)
        time.sleep(0.4)
    assert len(set(tokens)) >= 2  # a new login after the max TTL
    # The first token was renewed while it lived: it served for longer than its 2s TTL.
    assert tokens.count(tokens[0]) * 0.4 > 2.0


@pytest.fixture(scope="module")
def jwt_signer(openbao):
    """OpenBao's jwt auth trusting a key that the test signs with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client = openbao.client()
    if "jwt/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("jwt")
    client.sys.create_or_update_policy("bridge-read", POLICY)
    client.write("auth/jwt/config", jwt_validation_pubkeys=[public_pem])
    client.write("auth/jwt/role/bridge", role_type="jwt", user_claim="sub", bound_audiences=["bridge"],
                 token_policies=["bridge-read"], token_ttl="1h")

    def sign(**claims) -> str:
        now = int(time.time())
        body = {"sub": "app", "aud": "bridge", "iat": now, "nbf": now, "exp": now + 300, **claims}
        return pyjwt.encode(body, key, algorithm="RS256")

    return sign


def test_jwt_login(openbao, backend: VaultBackend, jwt_signer, tmp_path: Path) -> None:
    """A JWT signed by a trusted key logs in through the jwt method."""
    token_file = tmp_path / "jwt"
    token_file.write_text(jwt_signer())
    ref = backend.new_ref()
    value = unique_text()
    backend.put(ref, value)
    p = _provider(openbao, method="jwt", role="bridge", jwt_file=str(token_file))
    content, _ = read(p, ref, None, backend.text_fields)
    assert content == value.encode()


def test_jwt_wrong_audience_denied(openbao, jwt_signer, tmp_path: Path) -> None:
    """A JWT for another audience is refused as AccessDenied, without echoing the JWT."""
    token = jwt_signer(aud="someone-else")
    (tmp_path / "jwt").write_text(token)
    p = _provider(openbao, method="jwt", role="bridge", jwt_file=str(tmp_path / "jwt"))
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied)
    assert token not in str(outcome)


def test_given_token_is_renewed(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """A renewable token from token_file is renewed before it expires, so it keeps working."""
    client = openbao.client()
    token = _token_file(openbao, tmp_path, POLICY, ttl="3s", renewable=True)
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        assert read(p, ref, None, backend.text_fields)[0] == b"v"
        time.sleep(0.4)
    assert client.auth.token.lookup(token)["data"]["ttl"] >= 1  # alive well past its 3s TTL


def test_token_file_change_is_picked_up(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """A token_file rewritten by another process (e.g. Vault Agent) is used from then on."""
    client = openbao.client()
    client.sys.create_or_update_policy("bridge-read", POLICY)
    ref = backend.new_ref()
    backend.put(ref, "v")
    (tmp_path / "token").write_text("revoked-or-wrong")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert isinstance(p.fetch_many([Request(ref)])[Request(ref)], AccessDenied)
    time.sleep(0.01)
    (tmp_path / "token").write_text(client.auth.token.create(policies=["bridge-read"])["auth"]["client_token"])
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


@pytest.fixture(scope="module")
def kubernetes_api(openbao):
    """A minimal Kubernetes TokenReview endpoint that OpenBao's kubernetes auth calls over HTTP."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    reviewed: list[str] = []

    class TokenReview(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            claims = pyjwt.decode(body["spec"]["token"], options={"verify_signature": False})
            sa = claims["kubernetes.io"]["serviceaccount"]
            reviewed.append(sa["name"])
            status = {"authenticated": True, "audiences": body["spec"].get("audiences") or [],
                      "user": {"username": f"system:serviceaccount:{claims['kubernetes.io']['namespace']}:{sa['name']}",
                               "uid": sa["uid"], "groups": ["system:serviceaccounts"]}}
            out = json.dumps({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                              "status": status}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenReview)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openbao.client()
    if "kubernetes/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("kubernetes")
    client.sys.create_or_update_policy("bridge-read", POLICY)
    client.write("auth/kubernetes/config", kubernetes_host=f"http://127.0.0.1:{server.server_port}",
                 disable_local_ca_jwt=True, kubernetes_ca_cert=trustme.CA().cert_pem.bytes().decode())
    client.write("auth/kubernetes/role/web", bound_service_account_names=["web"],
                 bound_service_account_namespaces=["default"], token_policies=["bridge-read"])
    yield reviewed
    server.shutdown()


def test_kubernetes_login(openbao, backend: VaultBackend, kubernetes_api, tmp_path: Path) -> None:
    """The kubernetes method sends the service-account token, which the cluster reviews, and reads."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    identity = {"namespace": "default", "serviceaccount": {"name": "web", "uid": "u-1"}}
    claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:default:web",
              "aud": ["vault"], "iat": now, "exp": now + 600, "kubernetes.io": identity}
    sa_token = pyjwt.encode(claims, key, algorithm="RS256")
    (tmp_path / "token").write_text(sa_token)
    ref = backend.new_ref()
    value = unique_text()
    backend.put(ref, value)
    p = _provider(openbao, method="kubernetes", role="web", jwt_file=str(tmp_path / "token"))
    assert read(p, ref, None, backend.text_fields)[0] == value.encode()
    assert kubernetes_api and set(kubernetes_api) == {"web"}  # the login's review, and the renewal's that
    # learns the token's max TTL (OpenBao reviews the service account again on renewal)


def test_kubernetes_default_token_path() -> None:
    """The kubernetes method reads the pod's service-account token by default."""
    settings = VaultSettings(type="vault", address="http://x", auth={"method": "kubernetes", "role": "web"})
    assert str(settings.auth.jwt_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_namespace(openbao, monkeypatch: pytest.MonkeyPatch) -> None:
    """`namespace` reads from an OpenBao namespace, where the same path outside it differs."""
    client = openbao.client()
    name = f"ns{uuid.uuid4().hex[:8]}"
    client.sys.create_namespace(name)
    inner = openbao.client()
    inner.adapter.namespace = name
    inner.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    inner.secrets.kv.v2.create_or_update_secret(path="scoped", secret={"value": "inside"}, mount_point="secret")
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    p = VaultProvider("vault", VaultSettings(type="vault", address=openbao.address, namespace=name))
    assert read(p, "secret/scoped", None, {"key": "value"})[0] == b"inside"
    outside = _provider(openbao)
    assert isinstance(outside.fetch_many([Request("secret/scoped")])[Request("secret/scoped")], SecretNotFound)


def test_token_kept_alive_between_cycles(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """maintain(), called again when the seconds it returns have passed (as the engine does), renews
    a token across a gap with no requests longer than its TTL; it asks to come back before the TTL."""
    _token_file(openbao, tmp_path, POLICY, ttl="3s", renewable=True)
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    end = time.monotonic() + 6  # 6 s without a single read
    while time.monotonic() < end:
        wait = p.maintain()
        assert wait is not None and wait < 3
        time.sleep(max(wait, 0.1))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


def test_data_only_policy_falls_back_to_reading_values(openbao, backend: VaultBackend, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A policy granting only secret/data/* makes the check read values (logged once), not fail."""
    _token_file(openbao, tmp_path, 'path "secret/data/*" { capabilities = ["read"] }')
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    with caplog.at_level(logging.WARNING, logger="secrets_bridge"):
        for _ in range(3):
            assert latest(p, [ref]) == {ref: None}
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    assert sum("metadata" in r.getMessage() for r in caplog.records) == 1


def test_mount_not_guessed_without_a_token(openbao, monkeypatch: pytest.MonkeyPatch, kv1: str) -> None:
    """A first request without a working token teaches nothing about mounts: once a token exists,
    a KV v1 mount is still found."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="late", secret={"k": "v"}, mount_point=kv1)
    p = _provider(openbao)
    assert isinstance(p.fetch_many([Request("kv1/late")])[Request("kv1/late")], AccessDenied)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    assert read(p, "kv1/late", None, {"key": "k"})[0] == b"v"


def test_errors_are_one_line(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Vault's multi-line error text becomes one line."""
    _token_file(openbao, tmp_path, 'path "nope/*" { capabilities = ["read"] }')
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied) and "\n" not in str(outcome) and "permission denied" in str(outcome)


# -- throttling ------------------------------------------------------------------------------

class ThrottlingProxy:
    """A loopback HTTP proxy in front of OpenBao that answers requests whose path starts with
    `throttle_prefix` with `status` and a Retry-After header, and forwards the rest."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.throttle_prefix: str | None = None
        self.status = 429
        self.retry_after: str | None = "7"
        target = urllib.parse.urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.throttle_prefix and self.path.startswith(proxy.throttle_prefix):
                    out = b'{"errors":["request path \\"x\\": rate limit quota exceeded"]}'
                    self.send_response(proxy.status)
                    if proxy.retry_after is not None:
                        self.send_header("Retry-After", proxy.retry_after)
                else:
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    out = answer.read()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                            self.send_header(key, value)
                    conn.close()
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = do_LIST = _any

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def throttling(openbao):
    proxy = ThrottlingProxy(openbao.address)
    yield proxy
    proxy.server.shutdown()


@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "7", 7.0),
    (503, "2", 2.0),
    (429, None, None),
])
def test_retry_after_is_carried(openbao, backend: VaultBackend, throttling, monkeypatch: pytest.MonkeyPatch,
                                status: int, header: str | None, expected: float | None) -> None:
    """A throttled answer (429, or 503 from a sealed/standby server) is Unavailable carrying the
    server's Retry-After, for reads and for the change check alike."""
    ref = backend.new_ref()
    backend.put(ref, "v")
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    p = VaultProvider("vault", VaultSettings(type="vault", address=throttling.address))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"  # through the proxy, mount learnt
    throttling.throttle_prefix, throttling.status, throttling.retry_after = "/v1/secret/", status, header
    fetched = p.fetch_many([Request(ref)])[Request(ref)]
    checked = p.versions([Request(ref)])[Request(ref)]
    for outcome in (fetched, checked):
        assert isinstance(outcome, Unavailable)
        assert outcome.retry_after == expected
    throttling.throttle_prefix = None
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


# -- recovery (issue 9) ----------------------------------------------------------------------

def test_bad_token_teaches_nothing_about_mounts(openbao, kv1: str, tmp_path: Path) -> None:
    """A token the server refuses makes no guess about mounts stick: once the token is fixed,
    a KV v1 mount is read as KV v1."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="fixed", secret={"k": "v1-value"}, mount_point=kv1)
    (tmp_path / "token").write_text("not-a-real-token")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    for _ in range(2):
        assert isinstance(p.fetch_many([Request("kv1/fixed")])[Request("kv1/fixed")], AccessDenied)
    time.sleep(0.01)
    (tmp_path / "token").write_text(openbao.root_token)
    content, fetched = read(p, "kv1/fixed", None, {"key": "k"})
    assert (content, fetched.version) == (b"v1-value", None)


def test_revoked_token_does_not_switch_off_the_metadata_check(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Metadata refused because the token was revoked is not taken for a policy: with a new token
    the cheap check answers versions again."""
    ref = backend.new_ref()
    backend.put(ref, "v")
    token = _token_file(openbao, tmp_path, POLICY)
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert latest_one(p, ref) == "1"
    openbao.client().auth.token.revoke(token)
    assert isinstance(p.versions([Request(ref)])[Request(ref)], AccessDenied | type(None))
    assert isinstance(p.fetch_many([Request(ref)])[Request(ref)], AccessDenied)  # the engine's fallback read
    time.sleep(0.01)
    _token_file(openbao, tmp_path, POLICY)
    backend.put(ref, "w")
    assert latest_one(p, ref) == "2"


def test_data_only_policy_is_probed_again(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """After metadata_reprobe_seconds, a mount checked by reading values is probed again, so a
    widened policy brings back the cheap check."""
    name = f"p{uuid.uuid4().hex[:8]}"
    client = openbao.client()
    client.sys.create_or_update_policy(name, 'path "secret/data/*" { capabilities = ["read"] }')
    (tmp_path / "token").write_text(client.auth.token.create(policies=[name])["auth"]["client_token"])
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    p._kv.metadata_reprobe_seconds = 0.5
    assert latest_one(p, ref) is None
    assert read(p, ref, None, backend.text_fields)[0] == b"v"  # confirms: the policy grants data only
    client.sys.create_or_update_policy(name, POLICY)
    assert latest_one(p, ref) is None  # not probed before the re-probe time
    time.sleep(0.6)
    assert latest_one(p, ref) == "1"


def test_secret_recreated_within_an_interval_is_detected(provider: VaultProvider, backend: VaultBackend) -> None:
    """Deleted (metadata and all) and written again, a secret's version number restarts; the same
    number with another created_time makes the check answer None, so the engine fetches."""
    ref = backend.new_ref()
    path = ref.removeprefix("secret/")
    backend.put(ref, "first")
    content, fetched = read(provider, ref, None, backend.text_fields)
    assert (content, fetched.version, latest_one(provider, ref)) == (b"first", "1", "1")
    time.sleep(0.01)
    backend.client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
    assert backend.put(ref, "again") == "1"
    assert latest_one(provider, ref) is None
    content, fetched = read(provider, ref, None, backend.text_fields)
    assert (content, fetched.version) == (b"again", "1")
    assert latest_one(provider, ref) == "1"  # cheap again once fetched


def test_previous_version(provider: VaultProvider, backend: VaultBackend) -> None:
    """`version: previous` is the newest live version before the current one, skipping deleted
    and destroyed versions, and moves with every new version."""
    ref = backend.new_ref()
    path = ref.removeprefix("secret/")
    for value in ("one", "two", "three", "four"):
        backend.put(ref, value)
    kv = backend.client.secrets.kv.v2
    kv.delete_secret_versions(path=path, versions=[3], mount_point="secret")
    kv.destroy_secret_versions(path=path, versions=[2], mount_point="secret")
    assert provider.capabilities.previous and provider.moves("previous") and not provider.moves("4")
    content, fetched = read(provider, ref, "previous", backend.text_fields)
    assert (content, fetched.version) == (b"one", "1")
    request = Request(ref, "previous")
    assert provider.versions([request]) == {request: "1"}
    backend.put(ref, "five")
    assert provider.versions([request]) == {request: "4"}
    assert read(provider, ref, "previous", backend.text_fields)[0] == b"four"


def test_previous_without_an_earlier_version(provider: VaultProvider, backend: VaultBackend) -> None:
    """A secret with one version has no `previous`: SecretNotFound, never the current value."""
    ref = backend.new_ref()
    backend.put(ref, "only")
    outcome = provider.fetch_many([Request(ref, "previous")])[Request(ref, "previous")]
    assert isinstance(outcome, SecretNotFound) and "no live version before" in str(outcome)


def test_throttled_login_is_unavailable_with_retry_after(openbao, throttling) -> None:
    """A login answered 429 is Unavailable carrying Retry-After (not AccessDenied, which would
    retry slowly as if the credentials were wrong)."""
    role_id, secret_id = _approle(openbao, "bridge")
    p = VaultProvider("vault", VaultSettings(type="vault", address=throttling.address, auth={
        "method": "approle", "role_id": role_id, "secret_id": secret_id}))
    throttling.throttle_prefix = "/v1/auth/approle/login"
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, Unavailable) and outcome.retry_after == 7.0
    assert secret_id not in str(outcome)


def test_previous_needs_metadata_access(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """`version: previous` with a data-only policy is one AccessDenied line saying what to grant."""
    _token_file(openbao, tmp_path, 'path "secret/data/*" { capabilities = ["read"] }')
    ref = backend.new_ref()
    backend.put(ref, "one")
    backend.put(ref, "two")
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    outcome = p.fetch_many([Request(ref, "previous")])[Request(ref, "previous")]
    assert isinstance(outcome, AccessDenied) and "secret/metadata/*" in str(outcome) and "\n" not in str(outcome)


# -- fetch_many on a pool (several threads share the token, the mount cache and one session) ---

def _calls(provider: VaultProvider, operation: str, outcome: str = "ok") -> float:
    labels = {"provider": provider.name, "operation": operation, "outcome": outcome}
    return registry().get_sample_value("secrets_bridge_provider_requests_total", labels) or 0.0


def _together(count: int, call) -> list:  # type: ignore[no-untyped-def]
    """`call(i)` on `count` threads released at once; their results in order."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        start.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_fetch_many_reads_every_secret_on_the_pool(openbao, backend: VaultBackend, monkeypatch) -> None:
    """fetch_many of 40 secrets in two mounts returns each one's own value and version, and asks
    the server for each mount once."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    client = openbao.client()
    mounts = [f"pool{uuid.uuid4().hex[:8]}" for _ in range(2)]
    expected = {}
    for mount in mounts:
        client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        for i in range(20):
            value = unique_text()
            client.secrets.kv.v2.create_or_update_secret(path=f"s{i}", secret={"value": value}, mount_point=mount)
            expected[Request(f"{mount}/s{i}")] = value
    p = VaultProvider(f"pool-{uuid.uuid4().hex[:6]}", VaultSettings(type="vault", address=openbao.address))
    try:
        out = p.fetch_many(list(expected))
    finally:
        p.close()
    assert {r: f.value for r, f in out.items()} == {r: f'{{"value":"{v}"}}'.encode() for r, v in expected.items()}
    assert {f.version for f in out.values()} == {"1"}
    assert _calls(p, "mount_info") == 2


def test_mount_looked_up_once_by_threads_at_once(openbao, monkeypatch) -> None:
    """Eight first reads of one new mount, all at the same moment, look the mount up once."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    client = openbao.client()
    mount = f"burst{uuid.uuid4().hex[:8]}"
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    for i in range(8):
        client.secrets.kv.v2.create_or_update_secret(path=f"s{i}", secret={"value": str(i)}, mount_point=mount)
    p = VaultProvider(f"burst-{uuid.uuid4().hex[:6]}", VaultSettings(type="vault", address=openbao.address))
    try:
        fetched = _together(8, lambda i: p.fetch(Request(f"{mount}/s{i}")))
    finally:
        p.close()
    assert [f.value for f in fetched] == [f'{{"value":"{i}"}}'.encode() for i in range(8)]
    assert _calls(p, "mount_info") == 1


def test_refused_token_logs_in_again_once_for_all_threads(openbao, backend: VaultBackend,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """When the token is revoked under eight reads at once, one of them logs in again and every
    read succeeds with the new token."""
    role_id, secret_id = _approle(openbao, "bridge")
    refs = [backend.new_ref() for _ in range(8)]
    for ref in refs:
        backend.put(ref, ref)
    p = _provider(openbao, method="approle", role_id=role_id, secret_id=secret_id)
    try:
        p.fetch(Request(refs[0]))  # logged in, mount known
        openbao.client().auth.token.revoke(p._client.token)
        with caplog.at_level(logging.INFO, logger="secrets_bridge"):
            fetched = _together(8, lambda i: p.fetch(Request(refs[i])))
    finally:
        p.close()
    assert [f.value for f in fetched] == [f'{{"value":"{ref}"}}'.encode() for ref in refs]
    assert sum("logged in to vault" in r.getMessage() for r in caplog.records) == 1


def test_fetch_many_stops_at_an_unreachable_server(monkeypatch) -> None:
    """Against a server that does not answer, fetch_many makes one request, not one per secret."""
    monkeypatch.setenv("VAULT_TOKEN", "s.unused")
    p = VaultProvider(f"down-{uuid.uuid4().hex[:6]}",
                      VaultSettings(type="vault", address=f"http://127.0.0.1:{free_port()}", timeout=2))
    try:
        out = p.fetch_many([Request(f"secret/s{i}") for i in range(20)])
    finally:
        p.close()
    assert all(isinstance(o, Unavailable) for o in out.values()) and len(out) == 20
    assert _calls(p, "mount_info", "unavailable") == 1


# -- TLS -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openbao_tls(tmp_path_factory: pytest.TempPathFactory):
    """`bao server -dev-tls`: HTTPS with a CA of its own; yields (address, CA file), with one secret."""
    certs = tmp_path_factory.mktemp("bao-tls")
    ca = certs / "vault-ca.pem"
    address = f"https://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([venv_binary("bao"), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={certs}",
                             "-dev-root-token-id=tls-root", f"-dev-listen-address={address[8:]}",
                             "-dev-no-store-token"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = hvac.Client(url=address, token="tls-root", verify=str(ca))
        deadline = time.monotonic() + 20
        while True:
            try:
                client.secrets.kv.v2.create_or_update_secret(path="tls/one", secret={"value": "over-tls"})
                break
            except (OSError, requests.RequestException, hvac.exceptions.VaultError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield address, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # tls_skip_verify
@pytest.mark.parametrize(("fields", "works"), [({"ca_cert": True}, True), ({}, False),
                                                ({"tls_skip_verify": True}, True)])
def test_tls_ca_cert_and_skip_verify_apply(openbao_tls, monkeypatch, fields: dict, works: bool) -> None:
    """A server whose CA is no system root is read with `ca_cert` (or `tls_skip_verify`), and
    refused as a TLS error without either."""
    address, ca = openbao_tls
    monkeypatch.setenv("VAULT_TOKEN", "tls-root")
    if "ca_cert" in fields:
        fields = {"ca_cert": str(ca)}
    p = VaultProvider("tls", VaultSettings(type="vault", address=address, **fields))
    try:
        outcome = p.fetch_many([Request("secret/tls/one")])[Request("secret/tls/one")]
    finally:
        p.close()
    if works:
        assert isinstance(outcome, Fetched) and outcome.value == b'{"value":"over-tls"}'
    else:
        assert isinstance(outcome, Unavailable) and "TLS error" in str(outcome)


@pytest.mark.parametrize(("auth", "message"), [
    ("{method: aws, role: r}", "providers.v.auth.method: unknown method 'aws'; valid: token, approle, jwt, kubernetes"),
    ("{role: r}", "providers.v.auth.method: required field missing"),
])
def test_wrong_auth_method_is_one_plain_line(auth: str, message: str) -> None:
    """A wrong or missing auth `method` is one plain line naming the valid methods, not pydantic's tag jargon."""
    from bridge.config.loader import parse_config
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(f"providers:\n  v: {{type: vault, auth: {auth}}}\nsecrets: {{}}\n")
    assert str(err.value) == message


def test_new_token_is_not_taken_for_a_data_only_policy(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Metadata refused to a revoked token, then a value read with the token replaced in token_file:
    the read proves nothing about the old token's refusal, so the cheap check keeps answering
    versions (it stopped for 10 minutes)."""
    ref = backend.new_ref()
    backend.put(ref, "v")
    token = _token_file(openbao, tmp_path, POLICY)
    p = _provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert latest_one(p, ref) == "1"
    openbao.client().auth.token.revoke(token)
    assert isinstance(p.versions([Request(ref)])[Request(ref)], AccessDenied | type(None))
    time.sleep(0.01)
    _token_file(openbao, tmp_path, POLICY)
    assert read(p, ref, None, backend.text_fields)[0] == b"v"  # the engine's read of a failing unit
    backend.put(ref, "w")
    assert latest_one(p, ref) == "2"


def test_token_file_rewritten_with_its_mtime_kept_is_picked_up(openbao, backend: VaultBackend,
                                                                tmp_path: Path) -> None:
    """A token_file rewritten in place with its mtime put back (`cp -p`), the new token the same
    length as the old: the change is still seen (the ctime moves) and the new token used."""
    client = openbao.client()
    client.sys.create_or_update_policy("bridge-read", POLICY)
    ref = backend.new_ref()
    backend.put(ref, "v")
    token = client.auth.token.create(policies=["bridge-read"])["auth"]["client_token"]
    path = tmp_path / "token"
    path.write_text(token)
    p = _provider(openbao, method="token", token_file=str(path))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    client.auth.token.revoke(token)
    kept = os.stat(path)
    time.sleep(0.01)
    fresh = client.auth.token.create(policies=["bridge-read"])["auth"]["client_token"]
    assert len(fresh) == len(token)
    path.write_text(fresh)
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


@pytest.mark.parametrize("change", ["enable-versioning", "re-enable as v2", "re-enable as v1"])
def test_mount_changed_on_the_server_is_followed(openbao, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """A cached mount that changed KV version on the server (`kv enable-versioning`, or disabled
    and enabled again as the other version) is looked up again: the secret is found, not "not
    found" until a restart."""
    import providers.vault as vault_module

    monkeypatch.setattr(vault_module, "MOUNT_RECHECK_SECONDS", 0.2)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    client = openbao.client()
    mount = f"m{uuid.uuid4().hex[:8]}"
    before, after = ("2", "1") if change == "re-enable as v1" else ("1", "2")
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": before})

    def write(value: str, version: str) -> None:
        kv = client.secrets.kv.v1 if version == "1" else client.secrets.kv.v2
        kv.create_or_update_secret(path="app", secret={"k": value}, mount_point=mount)

    p = _provider(openbao)
    try:
        write("old", before)
        assert read(p, f"{mount}/app", None, {"key": "k"})[0] == b"old"
        if change == "enable-versioning":
            client.sys.tune_mount_configuration(path=mount, options={"version": "2"})
        else:
            client.sys.disable_secrets_engine(mount)
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": after})
        deadline = time.monotonic() + 15
        while True:  # an upgrade to v2 runs in the background for a moment
            try:
                write("new", after)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        while True:
            outcome = p.fetch_many([Request(f"{mount}/app")])[Request(f"{mount}/app")]
            if isinstance(outcome, Fetched) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert isinstance(outcome, Fetched), outcome
        assert json.loads(outcome.value)["k"] == "new"
        assert (outcome.version is None) == (after == "1")
    finally:
        p.close()
        client.sys.disable_secrets_engine(mount)


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_token_file_that_is_no_token_is_one_clear_error(openbao, backend: VaultBackend, tmp_path: Path,
                                                        kind: str) -> None:
    """A token_file that is a FIFO (nothing writes it) or a 3 GiB sparse file is AccessDenied
    naming it, at once: the read neither blocks nor takes gigabytes."""
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(3 << 30)
    ref = backend.new_ref()
    p = _provider(openbao, method="token", token_file=str(path))
    started = time.monotonic()
    outcome = p.fetch_many([Request(ref)])[Request(ref)]
    assert time.monotonic() - started < 5
    assert isinstance(outcome, AccessDenied) and "token_file" in str(outcome), outcome
    assert ("not a regular file" if kind == "fifo" else "larger than 64 KiB") in str(outcome)
