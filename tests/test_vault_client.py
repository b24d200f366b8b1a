"""The one path every Vault request takes (providers/vault_client.py): errors translated to one
line, Retry-After carried on a throttled answer, TLS (`ca_cert`, `tls_skip_verify`) and
`namespace` applied to the session."""

# The fixtures are imported from tests/vault_fixtures.py (no conftest, so no other module sees them).
# ruff: noqa: F811

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import hvac
import pytest
import requests

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.provider import Fetched, Request
from providers.vault import VaultProvider, VaultSettings
from tests.conformance import read
from tests.polling import wait_for
from tests.servers import free_port, venv_binary
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


def test_errors_are_one_line(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Vault's multi-line error text becomes one line."""
    make_token_file(openbao, tmp_path, 'path "nope/*" { capabilities = ["read"] }')
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    outcome = p.fetch_many([Request("secret/x")])[Request("secret/x")]
    assert isinstance(outcome, AccessDenied) and "\n" not in str(outcome) and "permission denied" in str(outcome)


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

        def written() -> bool:
            try:
                client.secrets.kv.v2.create_or_update_secret(path="tls/one", secret={"value": "over-tls"})
                return True
            except (OSError, requests.RequestException, hvac.exceptions.VaultError):
                return False

        if not wait_for(written, 20, step=0.2):
            client.secrets.kv.v2.create_or_update_secret(path="tls/one", secret={"value": "over-tls"})  # its error
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
    outside = make_provider(openbao)
    assert isinstance(outside.fetch_many([Request("secret/scoped")])[Request("secret/scoped")], SecretNotFound)

