"""What the Vault tests share (test_vault, test_vault_auth, test_vault_kv, test_vault_client): a
writer of KV v2 secrets, tokens with a policy, providers on the dev server, an AppRole, a KV v1
mount, a throttling proxy, and threads released at once.

Imported by those modules (no conftest, so no other module sees `provider` or `backend`)."""

from __future__ import annotations

import base64
import threading
import uuid
from pathlib import Path

import pytest

from providers.vault import VaultProvider, VaultSettings

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


def make_token_file(openbao, tmp_path: Path, policy: str, **create) -> str:
    """A token with only `policy`, written to tmp_path/token; returns the token."""
    client = openbao.client()
    name = f"p{uuid.uuid4().hex[:8]}"
    client.sys.create_or_update_policy(name, policy)
    token = client.auth.token.create(policies=[name], **create)["auth"]["client_token"]
    (tmp_path / "token").write_text(token)
    return token


def make_provider(openbao, **auth) -> VaultProvider:
    """A Vault provider on the dev server with the given `auth` (default: the token method)."""
    settings = VaultSettings(type="vault", address=openbao.address, auth=auth or {"method": "token"})
    return VaultProvider("vault", settings)


@pytest.fixture
def provider(openbao, monkeypatch: pytest.MonkeyPatch):
    """A provider reading with the root token from VAULT_TOKEN."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    p = make_provider(openbao)
    yield p
    p.close()


@pytest.fixture
def backend(openbao) -> VaultBackend:
    """Writes secrets with the root token."""
    return VaultBackend(openbao)


@pytest.fixture(scope="module")
def kv1(openbao) -> str:
    """A KV v1 mount at kv1/."""
    client = openbao.client()
    if "kv1/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    return "kv1"


def make_approle(openbao, name: str, **role) -> tuple[str, str]:
    """An AppRole `name` reading with POLICY; returns its role id and a new secret id."""
    client = openbao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy("bridge-read", POLICY)
    client.auth.approle.create_or_update_approle(name, token_policies=["bridge-read"], **role)
    role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    return role_id, secret_id


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
    """A ThrottlingProxy in front of the dev server (throttling nothing until told)."""
    proxy = ThrottlingProxy(openbao.address)
    yield proxy
    proxy.server.shutdown()


def together(count: int, call) -> list:  # type: ignore[no-untyped-def]
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

