"""How the Azure Key Vault provider authenticates (providers/_azure_credential.py), against the
fake identity server: the default chain (environment service principal, then managed identity,
never IMDS), client secret from a file, workload identity, managed identity, a sovereign
authority host, token expiry and renewal; no client secret in any message."""

# The fixtures are imported from tests/azure_fixtures.py (no conftest, so no other module sees the
# Azure environment); pytest then passes them by the same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from bridge.errors import AccessDenied
from bridge.provider import Request
from tests.azure_fake import VAULT_RESOURCE, VAULT_SCOPE, FakeKeyVault
from tests.azure_fixtures import (  # noqa: F401 - fixtures
    VAULT_URL,
    KeyVaultBackend,
    MakeProvider,
    azure_env,
    backend,
    ca_file,
    fake,
    make_provider,
    provider,
    secret_gets,
)


def test_default_chain_uses_environment_service_principal(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """DefaultAzureCredential takes the AZURE_* client secret, answers the vault's challenge, and reads."""
    ref = backend.new_ref()
    backend.put(ref, "from-env")
    before = len(fake.token_requests())
    assert make_provider().fetch(Request(ref)).value == b"from-env"
    (token_request,) = fake.token_requests()[before:]
    assert (token_request.kind, token_request.client_id, token_request.scope) == (
        "client_secret", "env-client", VAULT_SCOPE)
    assert token_request.granted


def test_client_secret_from_file(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, tmp_path: Path
) -> None:
    """An explicit client_secret credential reads its secret from client_secret_file."""
    client_id, secret = fake.add_client()
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret + "\n")
    ref = backend.new_ref()
    backend.put(ref, "via-file")
    provider = make_provider(credential={"method": "client_secret", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "client_secret_file": str(secret_file)})
    assert provider.fetch(Request(ref)).value == b"via-file"
    assert [t.client_id for t in fake.token_requests() if t.kind == "client_secret"][-1] == client_id


def test_wrong_client_secret_is_access_denied_without_the_secret(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """A refused client secret is AccessDenied naming the AADSTS code; neither secret shows anywhere."""
    client_id, _ = fake.add_client()
    wrong = "cs~wrong-" + uuid.uuid4().hex
    provider = make_provider(credential={"method": "client_secret", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "client_secret": wrong})
    ref = backend.new_ref()
    backend.put(ref, "x")
    with pytest.raises(AccessDenied) as info:
        provider.fetch(Request(ref))
    text = str(info.value) + repr(info.value) + repr(provider.settings) + str(provider.settings)
    assert "AADSTS7000215" in str(info.value)
    assert ref in str(info.value)
    for credential in [wrong, *fake.credentials()]:
        assert credential not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_workload_identity_explicit(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, tmp_path: Path
) -> None:
    """workload_identity posts the federated token file as a client assertion and reads."""
    client_id, token = fake.add_federated()
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(token)
    ref = backend.new_ref()
    backend.put(ref, "federated")
    provider = make_provider(credential={"method": "workload_identity", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "token_file": str(token_file)})
    assert provider.fetch(Request(ref)).value == b"federated"
    last = fake.token_requests()[-1]
    assert (last.kind, last.client_id, last.granted) == ("workload_identity", client_id, True)


def test_workload_identity_as_aks_injects_it(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On AKS the webhook's AZURE_* variables suffice, for `workload_identity` and the default chain."""
    client_id, token = fake.add_federated()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv("AZURE_CLIENT_ID", client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    ref = backend.new_ref()
    backend.put(ref, "aks")
    for credential in ("workload_identity", "default"):
        before = len(fake.token_requests())
        assert make_provider(credential=credential).fetch(Request(ref)).value == b"aks"
        kinds = [t.kind for t in fake.token_requests()[before:]]
        assert kinds == ["workload_identity"]


@pytest.mark.parametrize("user_assigned", [False, True])
def test_managed_identity(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, user_assigned: bool
) -> None:
    """managed_identity asks IDENTITY_ENDPOINT (with X-IDENTITY-HEADER) for the vault resource and reads."""
    client_id = str(uuid.uuid4()) if user_assigned else None
    fake.enable_managed_identity(client_id)
    ref = backend.new_ref()
    backend.put(ref, "msi")
    credential = {"method": "managed_identity", "client_id": client_id} if client_id else "managed_identity"
    assert make_provider(credential=credential).fetch(Request(ref)).value == b"msi"
    last = fake.token_requests()[-1]
    assert (last.kind, last.client_id, last.scope, last.granted) == (
        "managed_identity", client_id, VAULT_RESOURCE, True)


def test_default_chain_falls_to_managed_identity_never_imds(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without AZURE_* secrets the default chain reaches managed identity at the fake, never IMDS."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name)
    ref = backend.new_ref()
    backend.put(ref, "chain")
    assert make_provider().fetch(Request(ref)).value == b"chain"
    assert fake.token_requests()[-1].kind == "managed_identity"
    assert all(host.endswith(".vault.azure.net") or host.startswith("login.") for host in fake.connect_hosts)


def test_sovereign_authority_host(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """authority_host sends token requests to that cloud's login host."""
    client_id, secret = fake.add_client()
    ref = backend.new_ref()
    backend.put(ref, "gov")
    provider = make_provider(authority_host="https://login.microsoftonline.us",
                             credential={"method": "client_secret", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "client_secret": secret})
    assert provider.fetch(Request(ref)).value == b"gov"
    assert "login.microsoftonline.us" in fake.connect_hosts


def test_token_expiry_and_renewal(make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault) -> None:
    """A short-lived token is renewed: after it expires the next read asks for a second token and succeeds."""
    client_id, secret = fake.add_client()
    ref = backend.new_ref()
    backend.put(ref, "renewed")
    provider = make_provider(credential={"method": "client_secret", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "client_secret": secret})
    fake.state.token_lifetime_seconds = 2  # the first token only
    try:
        assert provider.fetch(Request(ref)).value == b"renewed"
    finally:
        fake.state.token_lifetime_seconds = 3600
    (first_expiry,) = [exp for exp, subject in fake.state.tokens.values() if subject == f"app:{client_id}"]
    time.sleep(max(0.0, first_expiry - time.time()) + 0.1)
    assert provider.fetch(Request(ref)).value == b"renewed"  # the fake refuses the first token by now
    mine = [t for t in fake.token_requests() if t.client_id == client_id]
    assert len(mine) == 2 and all(t.granted for t in mine)
    issued = sorted(exp for exp, subject in fake.state.tokens.values() if subject == f"app:{client_id}")
    assert issued[0] == first_expiry < time.time() < issued[1]

