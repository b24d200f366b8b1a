"""Leased and issued Vault values (providers/vault_leases.py) at the provider level, against real
servers: OpenBao's database engine in front of PostgreSQL, its PKI engine, and nginx as the
certificate's consumer."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import ProviderError, SecretNotFound
from bridge.provider import Fetched, Request
from providers.vault import VaultProvider, VaultSettings
from tests.polling import wait_for
from tests.versions import latest_one


@pytest.fixture
def provider(openbao, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    p = VaultProvider("vault", VaultSettings(type="vault", address=openbao.address))
    yield p
    p.close()


def _fetch(provider: VaultProvider, request: Request) -> Fetched:
    outcome = provider.fetch_many([request])[request]
    if isinstance(outcome, ProviderError):
        raise outcome
    return outcome


def _creds(fetched: Fetched) -> tuple[str, str]:
    data = json.loads(fetched.value)
    return data["username"], data["password"]


def test_database_creds_log_in(provider: VaultProvider, vault_database) -> None:
    """A read of database/creds/<role> is a leased value whose username and password log in."""
    ref = vault_database.role(default_ttl="1m", max_ttl="5m")
    before = time.time()
    fetched = _fetch(provider, Request(ref))
    assert fetched.lease_id and fetched.lease_id.startswith(ref + "/")
    assert fetched.renewable and fetched.lease_seconds == 60
    assert fetched.obtained_at is not None and before <= fetched.obtained_at <= time.time()
    assert fetched.expires_at == pytest.approx(fetched.obtained_at + 60)
    assert fetched.version and fetched.lease_id not in fetched.version  # the version never shows the id
    assert vault_database.postgres.can_login(*_creds(fetched))
    again = _fetch(provider, Request(ref))
    assert again.version != fetched.version and _creds(again)[0] != _creds(fetched)[0]  # a new issue each read


def test_renew_extends_and_keeps_the_username(provider: VaultProvider, vault_database) -> None:
    """renew() keeps value and version, grants the asked TTL, and the credentials keep working
    past the original TTL."""
    ref = vault_database.role(default_ttl="3s", max_ttl="1m")
    fetched = _fetch(provider, Request(ref))
    renewed = fetched
    for _ in range(3):  # three renewals, each before the last TTL ran out: past 3 original TTLs
        time.sleep(2)
        renewed = provider.renew(renewed, 4)
        assert renewed.lease_seconds == 4
    assert (renewed.value, renewed.version, renewed.lease_id) == (fetched.value, fetched.version, fetched.lease_id)
    assert renewed.obtained_at is not None and fetched.obtained_at is not None
    assert renewed.obtained_at > fetched.obtained_at
    assert renewed.expires_at == pytest.approx(renewed.obtained_at + 4)
    assert vault_database.postgres.can_login(*_creds(fetched))  # 6 s after a 3 s lease was issued


def test_renew_past_max_ttl_grants_less(provider: VaultProvider, vault_database) -> None:
    """At max_ttl, Vault grants less than asked: the caller sees it in lease_seconds."""
    ref = vault_database.role(default_ttl="5s", max_ttl="8s")
    fetched = _fetch(provider, Request(ref))
    renewed = provider.renew(fetched, 60)
    assert renewed.lease_seconds is not None and renewed.lease_seconds <= 8 < 60


def test_lease_alive_then_revoked(provider: VaultProvider, vault_database) -> None:
    """lease_alive() gives the seconds left; after revoke() it is None and the login is refused."""
    ref = vault_database.role(default_ttl="1m", max_ttl="5m")
    fetched = _fetch(provider, Request(ref))
    assert fetched.lease_id is not None
    left = provider.lease_alive(fetched.lease_id)
    assert left is not None and 0 < left <= 60
    provider.revoke(fetched.lease_id)
    assert provider.lease_alive(fetched.lease_id) is None
    assert not vault_database.postgres.can_login(*_creds(fetched))


def test_renew_of_a_revoked_lease_is_not_found(provider: VaultProvider, vault_database) -> None:
    """Renewing a lease that is gone is SecretNotFound (issue anew), and the message hides the id."""
    ref = vault_database.role()
    fetched = _fetch(provider, Request(ref))
    assert fetched.lease_id is not None
    provider.revoke(fetched.lease_id)
    with pytest.raises(SecretNotFound) as caught:
        provider.renew(fetched, 60)
    secret_part = fetched.lease_id.rsplit("/", 1)[1]
    assert secret_part not in str(caught.value) + repr(caught.value)
    assert ref in str(caught.value)


def test_expired_lease_is_not_alive(provider: VaultProvider, vault_database) -> None:
    """A lease past its TTL is None from lease_alive(), so a restarted bridge issues anew."""
    ref = vault_database.role(default_ttl="1s", max_ttl="1s")
    fetched = _fetch(provider, Request(ref))
    assert fetched.lease_id is not None
    assert wait_for(lambda: provider.lease_alive(fetched.lease_id) is None, 15, step=0.3), "the 1 s lease never expired"


def test_pki_issue_with_params(provider: VaultProvider, vault_pki) -> None:
    """A write with params issues a certificate: cert, key and CA; expires_at from `expiration`,
    the serial as version; a second issue is a new version."""
    params = Request.canonical_params({"common_name": f"web.{vault_pki.domain}", "ttl": "2m"})
    request = Request(vault_pki.issue_ref, params=params)
    before = time.time()
    fetched = _fetch(provider, request)
    data = json.loads(fetched.value)
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert data["issuing_ca"].strip() == vault_pki.ca_pem.strip()
    assert fetched.version == data["serial_number"]
    assert int(fetched.version.replace(":", ""), 16) == cert.serial_number
    assert data["expiration"] == int(cert.not_valid_after_utc.timestamp())
    # a duration from the answer, by the server's clock (here the same as ours), a second to spare
    assert fetched.expires_at is not None and fetched.obtained_at is not None
    assert data["expiration"] - 3 <= fetched.expires_at <= data["expiration"]
    validity = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    assert fetched.expires_at - fetched.obtained_at <= validity
    assert fetched.lease_id is None and not fetched.renewable
    assert fetched.obtained_at is not None and before <= fetched.obtained_at <= fetched.expires_at - 100
    assert _fetch(provider, request).version != fetched.version
    assert provider.versions([request]) == {request: None}  # issued units are never polled


def test_plain_read_of_another_engine(provider: VaultProvider, vault_pki) -> None:
    """A read of a non-KV path without a lease is a plain value, compared by content (no version)."""
    fetched = _fetch(provider, Request(f"{vault_pki.mount}/cert/ca"))
    assert json.loads(fetched.value)["certificate"].strip() == vault_pki.ca_pem.strip()
    assert (fetched.version, fetched.lease_id, fetched.expires_at) == (None, None, None)
    assert latest_one(provider, f"{vault_pki.mount}/cert/ca") is None


@pytest.mark.parametrize(("ref", "params", "says"), [
    ("database/creds/no-such-role", None, "database/creds/no-such-role"),
    ("pki/issue/web", {"common_name": "evil.example.com"}, "pki/issue/web"),
    ("pki/issue/web", None, "pki/issue/web"),
])
def test_bad_leased_ref_is_one_clear_error(provider: VaultProvider, vault_database, vault_pki,
                                           ref: str, params, says: str) -> None:
    """A bad role, a refused common name, or a read of a write-only path: one line naming the ref."""
    request = Request(ref, params=Request.canonical_params(params))
    outcome = provider.fetch_many([request])[request]
    assert isinstance(outcome, SecretNotFound)
    assert "\n" not in str(outcome) and str(outcome).startswith(f"vault: {says}: ")


def test_params_on_a_kv_mount_are_refused(provider: VaultProvider, openbao) -> None:
    """A write (params) to a KV path is refused instead of overwriting the secret."""
    openbao.client().secrets.kv.v2.create_or_update_secret(path="leases/kept", secret={"k": "v"},
                                                            mount_point="secret")
    request = Request("secret/leases/kept", params=Request.canonical_params({"k": "overwritten"}))
    outcome = provider.fetch_many([request])[request]
    assert isinstance(outcome, SecretNotFound) and "KV mount" in str(outcome)
    assert json.loads(_fetch(provider, Request("secret/leases/kept")).value) == {"k": "v"}


def test_version_on_another_engine_is_refused(provider: VaultProvider, vault_database) -> None:
    """`version` means a KV v2 version; on a database path it is a clear error, not a new lease."""
    request = Request(vault_database.role(), "3")
    outcome = provider.fetch_many([request])[request]
    assert isinstance(outcome, SecretNotFound) and "KV v2" in str(outcome)


def test_revoke_on_exit_setting() -> None:
    """revoke_on_exit is a provider field, false unless set."""
    assert VaultSettings(type="vault", address="http://x").revoke_on_exit is False
    assert VaultSettings(type="vault", address="http://x", revoke_on_exit=True).revoke_on_exit is True


def test_nginx_serves_and_reloads_an_issued_certificate(provider: VaultProvider, vault_pki, nginx, tmp_path) -> None:
    """The nginx fixture serves the issued certificate, and SIGHUP to its pid file's pid makes it
    serve a newly issued one (what the bridge's on_change signal does)."""
    params = Request.canonical_params({"common_name": f"web.{vault_pki.domain}", "ttl": "5m"})
    request = Request(vault_pki.issue_ref, params=params)
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(fetched: Fetched) -> int:
        data = json.loads(fetched.value)
        cert_file.write_text(data["certificate"])
        key_file.write_text(data["private_key"])
        return x509.load_pem_x509_certificate(data["certificate"].encode()).serial_number

    first = install(_fetch(provider, request))
    server = nginx(cert_file, key_file)
    assert server.served_certificate().serial_number == first
    second = install(_fetch(provider, request))
    os.kill(int(server.pid_file.read_text()), signal.SIGHUP)
    assert wait_for(lambda: server.served_certificate().serial_number == second, 15, step=0.1), \
        "nginx never served the new certificate"


def test_default_policy_allows_renew_and_lookup(openbao, vault_database, tmp_path) -> None:
    """A token granted only the creds path (plus Vault's default policy) can renew and look up its
    lease; revoking needs sys/leases/revoke, and its refusal is AccessDenied."""
    from bridge.errors import AccessDenied

    ref = vault_database.role()
    client = openbao.client()
    client.sys.create_or_update_policy("creds-only", f'path "{ref}" {{ capabilities = ["read"] }}')
    (tmp_path / "token").write_text(client.auth.token.create(policies=["creds-only"])["auth"]["client_token"])
    p = VaultProvider("vault", VaultSettings(type="vault", address=openbao.address,
                                             auth={"method": "token", "token_file": str(tmp_path / "token")}))
    fetched = _fetch(p, Request(ref))
    assert fetched.lease_id is not None
    assert p.renew(fetched, 30).lease_seconds == 30
    assert p.lease_alive(fetched.lease_id) is not None
    with pytest.raises(AccessDenied):
        p.revoke(fetched.lease_id)
    assert vault_database.postgres.can_login(*_creds(fetched))


def _creds_policy(openbao, ref: str) -> str:
    name = f"creds{abs(hash(ref)) % 10**8}"
    openbao.client().sys.create_or_update_policy(name, f'path "{ref}" {{ capabilities = ["read"] }}')
    return name


def test_lease_ends_with_the_approle_token(openbao, vault_database, provider: VaultProvider) -> None:
    """A lease minted with a login's token ends when that token reaches its max TTL (Vault revokes
    them together): expires_at and lease_seconds say so, and it is true."""
    ref = vault_database.role(default_ttl="1m", max_ttl="5m")
    client = openbao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle("leases", token_policies=[_creds_policy(openbao, ref)],
                                                 token_ttl="2s", token_max_ttl="5s")
    role_id = client.auth.approle.read_role_id("leases")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id("leases")["data"]["secret_id"]
    p = VaultProvider("vault", VaultSettings(type="vault", address=openbao.address, auth={
        "method": "approle", "role_id": role_id, "secret_id": secret_id}))
    fetched = _fetch(p, Request(ref))
    assert fetched.lease_id is not None and fetched.expires_at is not None and fetched.obtained_at is not None
    assert fetched.expires_at - fetched.obtained_at <= 5.5  # not the lease's own 60 s
    assert fetched.lease_seconds == 60  # Vault's grant, kept: the difference says "token-limited"
    renewed = p.renew(fetched, 60)
    assert renewed.expires_at is not None and renewed.obtained_at is not None
    assert renewed.expires_at - renewed.obtained_at < 60  # less than asked: the engine re-issues
    assert renewed.expires_at == pytest.approx(fetched.expires_at, abs=1.5)
    # Another process (a restarted bridge, with its own token) renewing it keeps the same end.
    resumed = provider.renew(fetched, 60)
    assert resumed.expires_at is not None and resumed.expires_at <= fetched.expires_at
    while time.time() < fetched.expires_at + 1.5:
        time.sleep(0.3)
    assert provider.lease_alive(fetched.lease_id) is None  # asked with the root token
    assert not vault_database.postgres.can_login(*_creds(fetched))


def test_lease_ends_with_a_given_non_renewable_token(openbao, vault_database, tmp_path) -> None:
    """A non-renewable token from token_file caps its leases at its own TTL."""
    ref = vault_database.role(default_ttl="1m", max_ttl="5m")
    token = openbao.client().auth.token.create(policies=[_creds_policy(openbao, ref)], ttl="30s",
                                               renewable=False)["auth"]["client_token"]
    (tmp_path / "token").write_text(token)
    p = VaultProvider("vault", VaultSettings(type="vault", address=openbao.address,
                                             auth={"method": "token", "token_file": str(tmp_path / "token")}))
    fetched = _fetch(p, Request(ref))
    assert fetched.expires_at is not None and fetched.obtained_at is not None
    assert 25 <= fetched.expires_at - fetched.obtained_at <= 31
