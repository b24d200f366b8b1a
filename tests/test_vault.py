"""The Vault/OpenBao provider as a whole (providers/vault.py) against a real OpenBao dev server:
the shared conformance cases, the mount found from the server (nested, KV v1, followed when it
changes, never guessed without a token) and fetch_many on its pool. Authentication, KV reads,
the request path and leases are tested in test_vault_auth, test_vault_kv, test_vault_client and
test_vault_leases."""

# The fixtures are imported from tests/vault_fixtures.py (no conftest, so no other module sees them).
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import AccessDenied, Unavailable
from bridge.observe.metrics import registry
from bridge.provider import Fetched, Request
from providers.vault import VaultProvider, VaultSettings
from tests.conformance import ProviderConformance, read, unique_text
from tests.fault_proxy import FaultProxy
from tests.polling import wait_for
from tests.servers import free_port
from tests.vault_fixtures import (  # noqa: F401 - fixtures
    VaultBackend,
    backend,
    kv1,
    make_provider,
    provider,
    together,
)


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


def test_nested_mount_path(provider: VaultProvider, openbao) -> None:
    """A KV v2 mount with a slash in its path is found from the ref."""
    client = openbao.client()
    if "team/kv/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="team/kv", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret(path="x/y", secret={"k": "v"}, mount_point="team/kv")
    content, fetched = read(provider, "team/kv/x/y", None, {"key": "k"})
    assert (content, fetched.version) == (b"v", "1")


    # learns the token's max TTL (OpenBao reviews the service account again on renewal)


def test_mount_not_guessed_without_a_token(openbao, monkeypatch: pytest.MonkeyPatch, kv1: str) -> None:
    """A first request without a working token teaches nothing about mounts: once a token exists,
    a KV v1 mount is still found."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="late", secret={"k": "v"}, mount_point=kv1)
    p = make_provider(openbao)
    assert isinstance(p.fetch_many([Request("kv1/late")])[Request("kv1/late")], AccessDenied)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    assert read(p, "kv1/late", None, {"key": "k"})[0] == b"v"




# -- recovery (issue 9) ----------------------------------------------------------------------

def test_bad_token_teaches_nothing_about_mounts(openbao, kv1: str, tmp_path: Path) -> None:
    """A token the server refuses makes no guess about mounts stick: once the token is fixed,
    a KV v1 mount is read as KV v1."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="fixed", secret={"k": "v1-value"}, mount_point=kv1)
    (tmp_path / "token").write_text("not-a-real-token")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    for _ in range(2):
        assert isinstance(p.fetch_many([Request("kv1/fixed")])[Request("kv1/fixed")], AccessDenied)
    time.sleep(0.01)
    (tmp_path / "token").write_text(openbao.root_token)
    content, fetched = read(p, "kv1/fixed", None, {"key": "k"})
    assert (content, fetched.version) == (b"v1-value", None)


# -- fetch_many on a pool (several threads share the token, the mount cache and one session) ---

def _calls(provider: VaultProvider, operation: str, outcome: str = "ok") -> float:
    labels = {"provider": provider.name, "operation": operation, "outcome": outcome}
    return registry().get_sample_value("secrets_bridge_provider_requests_total", labels) or 0.0


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
        fetched = together(8, lambda i: p.fetch(Request(f"{mount}/s{i}")))
    finally:
        p.close()
    assert [f.value for f in fetched] == [f'{{"value":"{i}"}}'.encode() for i in range(8)]
    assert _calls(p, "mount_info") == 1


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

    p = make_provider(openbao)
    try:
        write("old", before)
        assert read(p, f"{mount}/app", None, {"key": "k"})[0] == b"old"
        if change == "enable-versioning":
            client.sys.tune_mount_configuration(path=mount, options={"version": "2"})
        else:
            client.sys.disable_secrets_engine(mount)
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": after})
        def written() -> bool:
            try:
                write("new", after)
                return True
            except Exception:
                return False

        if not wait_for(written, 15, step=0.2):  # an upgrade to v2 runs in the background for a moment
            write("new", after)  # raises its error
        outcomes = []

        def fetched() -> bool:
            outcomes.append(p.fetch_many([Request(f"{mount}/app")])[Request(f"{mount}/app")])
            return isinstance(outcomes[-1], Fetched)

        wait_for(fetched, 15, step=0.3)
        outcome = outcomes[-1]
        assert isinstance(outcome, Fetched), outcome
        assert json.loads(outcome.value)["k"] == "new"
        assert (outcome.version is None) == (after == "1")
    finally:
        p.close()
        client.sys.disable_secrets_engine(mount)


