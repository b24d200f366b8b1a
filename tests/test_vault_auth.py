"""Vault/OpenBao authentication (providers/vault_auth.py) against the dev server: token (from the
environment or a token_file, renewed, re-read when rewritten), AppRole, JWT and Kubernetes logins,
login again past a token's max TTL or when it is refused, and no token, secret id or JWT in any
message."""

# The fixtures are imported from tests/vault_fixtures.py (no conftest, so no other module sees them).
# ruff: noqa: F811

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.errors import AccessDenied, Unavailable
from bridge.provider import Request
from providers.vault import VaultProvider, VaultSettings
from tests.conformance import read, unique_text
from tests.vault_fixtures import (  # noqa: F401 - fixtures
    POLICY,
    ThrottlingProxy,
    VaultBackend,
    backend,
    kv1,
    make_approle,
    make_provider,
    make_token_file,
    provider,
    throttling,
    together,
)


def test_missing_token_is_access_denied(openbao) -> None:
    """Without any token the provider says how to give one."""
    p = make_provider(openbao)
    outcome = p.fetch_many([Request("secret/anything")])[Request("secret/anything")]
    assert isinstance(outcome, AccessDenied)
    assert "VAULT_TOKEN" in str(outcome)


def test_bad_token_is_access_denied(openbao, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token the server refuses maps to AccessDenied and the message does not carry it."""
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token-123")
    p = make_provider(openbao)
    outcome = p.fetch_many([Request("secret/anything")])[Request("secret/anything")]
    assert isinstance(outcome, AccessDenied)
    assert "not-a-real-token-123" not in str(outcome) + repr(outcome)


def test_approle_login_from_files(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """AppRole with role_id_file/secret_id_file logs in and reads."""
    role_id, secret_id = make_approle(openbao, "bridge")
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id + "\n")
    ref = backend.new_ref()
    value = unique_text()
    backend.put(ref, value)
    p = make_provider(openbao, method="approle", role_id_file=str(tmp_path / "role-id"),
                  secret_id_file=str(tmp_path / "secret-id"))
    content, _ = read(p, ref, None, backend.text_fields)
    assert content == value.encode()
    assert secret_id not in repr(p.settings) + str(p.settings)


def test_approle_wrong_secret_id(openbao) -> None:
    """A wrong secret id is AccessDenied naming the method, not the secret id."""
    role_id, _ = make_approle(openbao, "bridge")
    p = make_provider(openbao, method="approle", role_id=role_id, secret_id="wrong-secret-id-xyz")
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied)
    assert "approle login failed" in str(outcome)
    assert "wrong-secret-id-xyz" not in str(outcome) + repr(p.settings)


def test_token_renewed_then_login_again(openbao, backend: VaultBackend) -> None:
    """Short-lived tokens are renewed and, past their max TTL, replaced by a new login."""
    role_id, secret_id = make_approle(openbao, "short", token_ttl="2s", token_max_ttl="4s")
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = make_provider(openbao, method="approle", role_id=role_id, secret_id=secret_id)
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
    p = make_provider(openbao, method="jwt", role="bridge", jwt_file=str(token_file))
    content, _ = read(p, ref, None, backend.text_fields)
    assert content == value.encode()


def test_jwt_wrong_audience_denied(openbao, jwt_signer, tmp_path: Path) -> None:
    """A JWT for another audience is refused as AccessDenied, without echoing the JWT."""
    token = jwt_signer(aud="someone-else")
    (tmp_path / "jwt").write_text(token)
    p = make_provider(openbao, method="jwt", role="bridge", jwt_file=str(tmp_path / "jwt"))
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied)
    assert token not in str(outcome)


def test_given_token_is_renewed(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """A renewable token from token_file is renewed before it expires, so it keeps working."""
    client = openbao.client()
    token = make_token_file(openbao, tmp_path, POLICY, ttl="3s", renewable=True)
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
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
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
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
    p = make_provider(openbao, method="kubernetes", role="web", jwt_file=str(tmp_path / "token"))
    assert read(p, ref, None, backend.text_fields)[0] == value.encode()
    assert kubernetes_api and set(kubernetes_api) == {"web"}  # the login's review, and the renewal's that


def test_kubernetes_default_token_path() -> None:
    """The kubernetes method reads the pod's service-account token by default."""
    settings = VaultSettings(type="vault", address="http://x", auth={"method": "kubernetes", "role": "web"})
    assert str(settings.auth.jwt_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_token_kept_alive_between_cycles(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """maintain(), called again when the seconds it returns have passed (as the engine does), renews
    a token across a gap with no requests longer than its TTL; it asks to come back before the TTL."""
    make_token_file(openbao, tmp_path, POLICY, ttl="3s", renewable=True)
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    end = time.monotonic() + 6  # 6 s without a single read
    while time.monotonic() < end:
        wait = p.maintain()
        assert wait is not None and wait < 3
        time.sleep(max(wait, 0.1))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


def test_throttled_login_is_unavailable_with_retry_after(openbao, throttling) -> None:
    """A login answered 429 is Unavailable carrying Retry-After (not AccessDenied, which would
    retry slowly as if the credentials were wrong)."""
    role_id, secret_id = make_approle(openbao, "bridge")
    p = VaultProvider("vault", VaultSettings(type="vault", address=throttling.address, auth={
        "method": "approle", "role_id": role_id, "secret_id": secret_id}))
    throttling.throttle_prefix = "/v1/auth/approle/login"
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, Unavailable) and outcome.retry_after == 7.0
    assert secret_id not in str(outcome)


def test_refused_token_logs_in_again_once_for_all_threads(openbao, backend: VaultBackend,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """When the token is revoked under eight reads at once, one of them logs in again and every
    read succeeds with the new token."""
    role_id, secret_id = make_approle(openbao, "bridge")
    refs = [backend.new_ref() for _ in range(8)]
    for ref in refs:
        backend.put(ref, ref)
    p = make_provider(openbao, method="approle", role_id=role_id, secret_id=secret_id)
    try:
        p.fetch(Request(refs[0]))  # logged in, mount known
        openbao.client().auth.token.revoke(p._client.token)
        with caplog.at_level(logging.INFO, logger="secrets_bridge"):
            fetched = together(8, lambda i: p.fetch(Request(refs[i])))
    finally:
        p.close()
    assert [f.value for f in fetched] == [f'{{"value":"{ref}"}}'.encode() for ref in refs]
    assert sum("logged in to vault" in r.getMessage() for r in caplog.records) == 1


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
    p = make_provider(openbao, method="token", token_file=str(path))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    client.auth.token.revoke(token)
    kept = os.stat(path)
    time.sleep(0.01)
    fresh = client.auth.token.create(policies=["bridge-read"])["auth"]["client_token"]
    assert len(fresh) == len(token)
    path.write_text(fresh)
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert read(p, ref, None, backend.text_fields)[0] == b"v"


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
    p = make_provider(openbao, method="token", token_file=str(path))
    started = time.monotonic()
    outcome = p.fetch_many([Request(ref)])[Request(ref)]
    assert time.monotonic() - started < 5
    assert isinstance(outcome, AccessDenied) and "token_file" in str(outcome), outcome
    assert ("not a regular file" if kind == "fifo" else "larger than 64 KiB") in str(outcome)

