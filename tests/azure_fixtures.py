"""Session fixtures for the Azure Key Vault tests: the fake server, its CA, and a scoped environment.

Imported by tests/test_azure_keyvault.py (no conftest). The proxy and AZURE_* variables are set per
test with monkeypatch, so no other test module sees them. IDENTITY_ENDPOINT always points at the
fake, so no credential ever probes the cloud instance metadata service (IMDS).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.azure_keyvault import KeyVaultProvider
from tests.azure_fake import FakeKeyVault
from tests.servers import SharedServer

VAULT_URL = "https://kv-bridge-test.vault.azure.net"
#: what the AZURE_* environment names: the service principal the default chain finds
ENV_CLIENT = "env-client"
#: the `make_provider` fixture: settings fields -> a provider on the fake
MakeProvider = Callable[..., KeyVaultProvider]


def _server(ca_dir: Path) -> FakeKeyVault:
    server = FakeKeyVault()
    server.write_ca(str(ca_dir / "ca.pem"))
    server.add_client(ENV_CLIENT)
    server.enable_managed_identity()
    return server


#: one server per test process, even when several modules import the `fake` fixture: the Key Vault
#: SDK caches each vault URL's challenge, with its tenant, process-wide, so a second server with
#: another tenant would be refused its tokens
_SHARED: SharedServer[FakeKeyVault] = SharedServer()


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKeyVault]:
    with _SHARED.use(lambda: _server(tmp_path_factory.mktemp("azure-ca"))) as server:
        yield server


@pytest.fixture(scope="session")
def ca_file(fake: FakeKeyVault, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(fake.write_ca(str(tmp_path_factory.mktemp("azure-trust") / "ca.pem")))


@pytest.fixture(autouse=True)
def azure_env(monkeypatch: pytest.MonkeyPatch, fake: FakeKeyVault) -> None:
    """Every host through the fake's CONNECT proxy; the default chain stops at the environment."""
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "no_proxy",
                 "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "MSI_ENDPOINT", "MSI_SECRET",
                 "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                 "AZURE_TOKEN_CREDENTIALS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", fake.proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AZURE_TENANT_ID", fake.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", ENV_CLIENT)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", fake.state.clients[ENV_CLIENT])
    monkeypatch.setenv("IDENTITY_ENDPOINT", fake.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", fake.state.identity_header)


@pytest.fixture
def make_provider(ca_file: Path) -> Iterator[Callable[..., KeyVaultProvider]]:
    """Build providers from config fields (vault_url and ca_cert filled in); closes them afterwards."""
    made: list[KeyVaultProvider] = []

    def make(**fields: Any) -> KeyVaultProvider:
        section = {"type": "azure-keyvault", "vault_url": VAULT_URL, "ca_cert": str(ca_file), **fields}
        provider = KeyVaultProvider(f"azure-{len(made)}", KeyVaultProvider.Settings(**section))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


class KeyVaultBackend:
    """Writes through the vault's own API with the real SDK, as an operator's tooling would."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {"encoding": "base64"}

    def __init__(self, fake: FakeKeyVault, ca_file: Path, vault_url: str = VAULT_URL) -> None:
        from azure.identity import ClientSecretCredential
        from azure.keyvault.secrets import SecretClient

        self.fake = fake
        self.vault_url = vault_url
        client_id, secret = fake.add_client()
        self._credential = ClientSecretCredential(fake.tenant_id, client_id, secret,
                                                  connection_verify=str(ca_file))
        self.client = SecretClient(vault_url, self._credential, connection_verify=str(ca_file))

    def new_ref(self) -> str:
        return f"t-{uuid.uuid4().hex[:24]}"

    def put(self, ref: str, value: str, content_type: str | None = None) -> str:
        version = self.client.set_secret(ref, value, content_type=content_type).properties.version
        assert version
        return version

    def put_binary(self, ref: str, data: bytes) -> str:
        import base64

        return self.put(ref, base64.b64encode(data).decode(), content_type="application/octet-stream")

    def credentials(self) -> list[str]:
        return self.fake.credentials()

    def close(self) -> None:
        self.client.close()
        self._credential.close()


@pytest.fixture
def backend(fake: FakeKeyVault, ca_file: Path) -> Iterator[KeyVaultBackend]:
    writer = KeyVaultBackend(fake, ca_file)
    yield writer
    writer.close()


@pytest.fixture
def provider(make_provider: Callable[..., KeyVaultProvider]) -> KeyVaultProvider:
    """The default credential chain, which finds the AZURE_* service principal."""
    return make_provider()


def secret_gets(fake: FakeKeyVault, vault: str, name: str) -> int:
    """How many authorised GETs of secret `name` (any version) `vault` has answered."""
    return sum(1 for m, p, s in fake.requests(vault) if m == "GET" and p.startswith(f"/secrets/{name}/") and s != 401)
