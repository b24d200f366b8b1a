"""Session fixtures for the Secret Manager tests: the fake server, its CA, key files, a scoped
environment. Imported by tests/test_gcp_secretmanager.py and tests/test_gcp_client.py (no conftest).
google-auth reads GCE_METADATA_HOST when it is first imported, so this module points it (and
GCE_METADATA_IP, the detection ping) at a loopback port before any test imports google-auth; the
fake's metadata server listens there and answers only once a test enables it. Every Google host goes
through the fake's CONNECT proxy (HTTPS_PROXY), so no request can reach Google or a metadata
address.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import certifi
import pytest

from tests.gcp_fake import FakeSecretManager
from tests.servers import SharedServer, free_port

if "google.auth.compute_engine._metadata" in sys.modules:  # pragma: no cover - import order guard
    raise RuntimeError("google-auth was imported before tests/gcp_fixtures.py could point it at loopback")
METADATA_PORT = free_port()
os.environ["GCE_METADATA_HOST"] = f"127.0.0.1:{METADATA_PORT}"
os.environ["GCE_METADATA_IP"] = f"127.0.0.1:{METADATA_PORT}"

PROJECT = "bridge-test"

from providers.gcp_secretmanager import GcpSecretManagerProvider  # noqa: E402 - after the environment

MakeProvider = Callable[..., GcpSecretManagerProvider]


def _server() -> FakeSecretManager:
    server = FakeSecretManager(metadata_port=METADATA_PORT)
    server.add_project(PROJECT)
    return server


#: one server per test process, even when several modules import the `gcp` fixture: its metadata
#: server must listen on METADATA_PORT, which google-auth read once at import
_SHARED: SharedServer[FakeSecretManager] = SharedServer()


@pytest.fixture(scope="session")
def gcp() -> Iterator[FakeSecretManager]:
    """The fake Secret Manager, token and metadata server, shared by every module that imports it."""
    with _SHARED.use(_server) as server:
        yield server


@pytest.fixture(scope="session")
def ca_file(gcp: FakeSecretManager, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(gcp.write_ca(str(tmp_path_factory.mktemp("gcp-ca") / "ca.pem")))


@pytest.fixture(scope="session")
def key_file(gcp: FakeSecretManager, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service-account key that GOOGLE_APPLICATION_CREDENTIALS names."""
    path = tmp_path_factory.mktemp("gcp-key") / "key.json"
    path.write_text(json.dumps(gcp.add_service_account(PROJECT)))
    return path


@pytest.fixture(autouse=True)
def gcp_env(monkeypatch: pytest.MonkeyPatch, gcp: FakeSecretManager, key_file: Path, tmp_path: Path) -> None:
    """Every host through the fake's proxy; ADC finds the service-account key; no gcloud config."""
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "no_proxy",
                 "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT",
                 "GCE_METADATA_ROOT", "GOOGLE_API_USE_CLIENT_CERTIFICATE", "GOOGLE_API_USE_MTLS_ENDPOINT",
                 "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "NO_GCE_CHECK"):
        monkeypatch.delenv(name, raising=False)
    # the system roots in the environment, as in many images: `ca_cert` must still be the one trusted
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("HTTPS_PROXY", gcp.proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    empty = tmp_path / "gcloud"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{METADATA_PORT}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{METADATA_PORT}")


@pytest.fixture
def make_provider(ca_file: Path) -> Iterator[MakeProvider]:
    """Build providers from config fields (ca_cert filled in); closes them afterwards."""
    made: list[GcpSecretManagerProvider] = []

    def make(**fields: Any) -> GcpSecretManagerProvider:
        section = {"type": "gcp-secretmanager", "ca_cert": str(ca_file), **fields}
        provider = GcpSecretManagerProvider(f"gcp-{len(made)}", GcpSecretManagerProvider.Settings(**section))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


class SecretManagerBackend:
    """Writes through Secret Manager's own API with the real SDK, as an operator's tooling would."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {}

    def __init__(self, fake: FakeSecretManager, ca_file: Path, key: Path) -> None:
        from providers._gcp_client import build_client

        self.fake = fake
        settings = GcpSecretManagerProvider.Settings(type="gcp-secretmanager", ca_cert=ca_file, credentials_file=key)
        self.client, _ = build_client(settings)
        self._created: set[str] = set()

    def new_ref(self) -> str:
        return f"t-{uuid.uuid4().hex[:24]}"

    def put_binary(self, ref: str, data: bytes) -> str:
        if ref not in self._created:
            self.client.create_secret(parent=f"projects/{PROJECT}", secret_id=ref,
                                      secret={"replication": {"automatic": {}}})
            self._created.add(ref)
        version = self.client.add_secret_version(parent=f"projects/{PROJECT}/secrets/{ref}", payload={"data": data})
        return str(version.name.rsplit("/", 1)[-1])

    def put(self, ref: str, value: str) -> str:
        return self.put_binary(ref, value.encode())

    def set_state(self, ref: str, version: str, verb: str) -> None:
        """disable, enable or destroy a version through the API."""
        name = f"projects/{PROJECT}/secrets/{ref}/versions/{version}"
        getattr(self.client, f"{verb}_secret_version")(name=name)

    def credentials(self) -> list[str]:
        return self.fake.credentials()

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.fake.fail_next(10**9, 503)
        try:
            yield
        finally:
            self.fake.clear_faults()

    def calls(self) -> int:
        return len(self.fake.requests())

    def close(self) -> None:
        self.client.transport.close()


@pytest.fixture
def backend(gcp: FakeSecretManager, ca_file: Path, key_file: Path) -> Iterator[SecretManagerBackend]:
    writer = SecretManagerBackend(gcp, ca_file, key_file)
    yield writer
    writer.close()


@pytest.fixture
def provider(make_provider: MakeProvider) -> GcpSecretManagerProvider:
    """Application Default Credentials, which find the GOOGLE_APPLICATION_CREDENTIALS key."""
    return make_provider()
