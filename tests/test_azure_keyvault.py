"""The Azure Key Vault provider as a whole (providers/azure_keyvault.py) against the fake TLS Key
Vault and identity server (real SDK, real HTTPS): conformance, reading (pins, JSON keys,
certificates), the cheap change check, the engine and CLI over it, settings. Credentials and error
translation are tested in test_azure_credential and test_azure_errors."""

# The fixtures are imported from tests/azure_fixtures.py (no conftest, so no other module sees the
# Azure environment); pytest then passes them by the same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
    pkcs12,
)
from pydantic import ValidationError

from bridge.engine.cycle import Engine
from bridge.errors import SecretNotFound, Unavailable
from bridge.provider import PREVIOUS, Fetched, Request
from providers.azure_keyvault import KeyVaultProvider
from tests.azure_fake import FakeKeyVault
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
from tests.conformance import ProviderConformance, read, unique_text
from tests.engines import make_engine
from tests.harness import Bridge
from tests.versions import latest


class OutageBackend(KeyVaultBackend):
    """The vault answers 503 to every authorised request while inside `outage()`."""

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.fake.fail_next(10**9, 503)
        try:
            yield
        finally:
            with self.fake.state.lock:
                self.fake.state.faults.clear()

    def calls(self) -> int:
        return len(self.fake.requests(self.vault_url))


class TestKeyVaultConformance(ProviderConformance):
    """The shared provider cases, with the default credential chain (AZURE_* service principal)."""

    @pytest.fixture
    def backend(self, fake: FakeKeyVault, ca_file: Path) -> Iterator[OutageBackend]:
        writer = OutageBackend(fake, ca_file)
        yield writer
        writer.close()


def _lists(fake: FakeKeyVault, vault: str) -> int:
    return sum(1 for m, p, _ in fake.requests(vault) if m == "GET" and p == "/secrets")




# -- reading ------------------------------------------------------------------------------------------


def test_version_pin_and_rotation(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """A pin keeps its value across rotations while the latest follows, and the cheap check sees each one."""
    ref = backend.new_ref()
    v1 = backend.put(ref, "one")
    assert latest(provider, [ref])[ref] == v1
    v2 = backend.put(ref, "two")
    assert latest(provider, [ref])[ref] == v2
    assert provider.fetch(Request(ref, v1)).value == b"one"
    newest = provider.fetch(Request(ref))
    assert (newest.value, newest.version) == (b"two", v2)


def test_missing_pinned_version(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """A pin to a version that does not exist is SecretNotFound naming ref and version."""
    ref = backend.new_ref()
    backend.put(ref, "x")
    missing = uuid.uuid4().hex
    with pytest.raises(SecretNotFound) as info:
        provider.fetch(Request(ref, missing))
    assert ref in str(info.value) and missing in str(info.value)


def test_invalid_name_makes_no_request(provider: KeyVaultProvider, fake: FakeKeyVault) -> None:
    """A ref that cannot be a Key Vault name is SecretNotFound before any request."""
    before = len(fake.requests())
    with pytest.raises(SecretNotFound, match="not a valid Key Vault secret name"):
        provider.fetch(Request("app/db_password"))
    assert len(fake.requests()) == before


def test_json_key(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """`key` picks one field of a JSON secret."""
    ref = backend.new_ref()
    backend.put(ref, json.dumps({"username": "app", "password": "pw-123"}), content_type="application/json")
    content, fetched = read(provider, ref, None, {"key": "password"})
    assert content == b"pw-123"
    assert fetched.content_type == "application/json"


def _pfx(ca: trustme.CA) -> tuple[bytes, x509.Certificate]:
    leaf = ca.issue_cert("site.example.com")
    key = load_pem_private_key(leaf.private_key_pem.bytes(), None)
    cert, *chain = [x509.load_pem_x509_certificate(b.bytes()) for b in leaf.cert_chain_pems]
    chain.append(x509.load_pem_x509_certificate(ca.cert_pem.bytes()))
    return pkcs12.serialize_key_and_certificates(None, key, cert, chain, NoEncryption()), cert  # type: ignore[arg-type]


def test_certificate_pfx_written_as_pem(
    provider: KeyVaultProvider, backend: KeyVaultBackend, tmp_path: Path
) -> None:
    """A Key Vault certificate (base64 PKCS#12 secret) becomes PEM key + chain that a TLS server loads."""
    import base64

    pfx, cert = _pfx(trustme.CA())
    ref = backend.new_ref()
    backend.put(ref, base64.b64encode(pfx).decode(), content_type="application/x-pkcs12")
    content, fetched = read(provider, ref, None, {"format": "pem"})
    assert fetched.content_type == "application/x-pkcs12"
    assert content.startswith(b"-----BEGIN PRIVATE KEY-----")
    certs = x509.load_pem_x509_certificates(content)
    assert certs[0] == cert and len(certs) >= 2
    pem_file = tmp_path / "site.pem"
    pem_file.write_bytes(content)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(pem_file)  # key matches cert


def test_password_protected_pfx_is_refused(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """A PKCS#12 with a password (not what Key Vault exports) is a clear error, not garbage PEM."""
    import base64

    from bridge.engine.extract import ExtractError

    pfx = pkcs12.serialize_key_and_certificates(
        None, *_key_and_cert(), None, BestAvailableEncryption(b"pw"))
    ref = backend.new_ref()
    backend.put(ref, base64.b64encode(pfx).decode(), content_type="application/x-pkcs12")
    with pytest.raises(ExtractError, match="PKCS#12"):
        read(provider, ref, None, {"format": "pem"})


def _key_and_cert() -> tuple[object, x509.Certificate]:
    leaf = trustme.CA().issue_cert("x.example.com")
    return (load_pem_private_key(leaf.private_key_pem.bytes(), None),
            x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))


def test_pem_certificate_passes_through(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """A certificate stored as application/x-pem-file is written as it is."""
    leaf = trustme.CA().issue_cert("pem.example.com")
    pem = (leaf.private_key_pem.bytes() + b"".join(b.bytes() for b in leaf.cert_chain_pems)).decode()
    ref = backend.new_ref()
    backend.put(ref, pem, content_type="application/x-pem-file")
    content, _ = read(provider, ref, None, {"format": "pem"})
    assert content == pem.encode()


@pytest.mark.parametrize("content_type", ["application/x-pkcs12", "application/x-pem-file"])
def test_certificate_split_into_key_cert_and_chain(
    provider: KeyVaultProvider, backend: KeyVaultBackend, tmp_path: Path, content_type: str
) -> None:
    """`format: pem-key`, `pem-cert`, `pem-chain` and `pem-fullchain` each write their part, from
    PKCS#12 or PEM: the key matches the certificate, the chain holds the rest and not the leaf."""
    import base64

    pfx, cert = _pfx(trustme.CA())
    key, leaf, chain = pkcs12.load_key_and_certificates(pfx, None)
    assert key is not None and leaf is not None and chain
    ref = backend.new_ref()
    if content_type == "application/x-pkcs12":
        backend.put(ref, base64.b64encode(pfx).decode(), content_type=content_type)
    else:
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + b"".join(
            c.public_bytes(Encoding.PEM) for c in [leaf, *chain])
        backend.put(ref, pem.decode(), content_type=content_type)
    parts = {fmt: read(provider, ref, None, {"format": fmt})[0]
             for fmt in ("pem-key", "pem-cert", "pem-chain", "pem-fullchain")}
    assert parts["pem-key"].startswith(b"-----BEGIN PRIVATE KEY-----") and b"CERTIFICATE" not in parts["pem-key"]
    assert x509.load_pem_x509_certificates(parts["pem-cert"]) == [cert]
    assert x509.load_pem_x509_certificates(parts["pem-chain"]) == chain
    assert x509.load_pem_x509_certificates(parts["pem-fullchain"]) == [cert, *chain]
    (tmp_path / "key.pem").write_bytes(parts["pem-key"])
    (tmp_path / "fullchain.pem").write_bytes(parts["pem-fullchain"])
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "fullchain.pem",
                                                                         tmp_path / "key.pem")


def test_certificate_part_missing_is_one_clear_error(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """`format: pem-key` over a value without a private key fails that entry naming the format."""
    from bridge.engine.extract import ExtractError

    _, cert = _key_and_cert()
    ref = backend.new_ref()
    backend.put(ref, cert.public_bytes(Encoding.PEM).decode(), content_type="application/x-pem-file")
    with pytest.raises(ExtractError, match=r"no private key \(format: pem-key\)"):
        read(provider, ref, None, {"format": "pem-key"})


def test_expired_secret_is_served_with_a_warning(
    provider: KeyVaultProvider, backend: KeyVaultBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Key Vault serves an expired secret: it is returned with expires_at and one warning without the value."""
    ref = backend.new_ref()
    value = unique_text()
    expired = datetime.now(UTC) - timedelta(days=1)
    backend.client.set_secret(ref, value, expires_on=expired)
    with caplog.at_level(logging.WARNING, logger="secrets_bridge.providers.azure_keyvault"):
        first = provider.fetch(Request(ref))
        provider.fetch(Request(ref))
    assert first.value == value.encode()
    assert first.expires_at == pytest.approx(expired.timestamp(), abs=1)
    warnings = [r for r in caplog.records if r.name == "secrets_bridge.providers.azure_keyvault"]
    assert len(warnings) == 1 and "expired" in warnings[0].getMessage()
    assert value not in caplog.text




# -- the cheap change check -----------------------------------------------------------------------------


def _vault(fake: FakeKeyVault, names: list[str], age_seconds: int = 60) -> tuple[str, dict[str, str]]:
    url = f"https://kv-{uuid.uuid4().hex[:12]}.vault.azure.net"
    return url, {n: fake.set_secret(url, n, unique_text(), age_seconds=age_seconds) for n in names}


def test_cheap_check_one_list_page_for_settled_secrets(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """Secrets read once are confirmed by one list page, with no GET; a rotation costs one GET of that secret."""
    url, versions = _vault(fake, ["alpha", "beta", "gamma"])
    provider = make_provider(vault_url=url)
    for name in versions:
        provider.fetch(Request(name))
    gets = {n: secret_gets(fake, url, n) for n in versions}
    assert latest(provider, list(versions)) == versions
    assert _lists(fake, url) == 1
    assert {n: secret_gets(fake, url, n) for n in versions} == gets

    rotated = fake.set_secret(url, "beta", "new value")
    assert latest(provider, list(versions)) == {**versions, "beta": rotated}
    assert _lists(fake, url) == 2
    assert {n: secret_gets(fake, url, n) for n in versions} == {**gets, "beta": gets["beta"] + 1}


def test_cheap_check_never_trusts_a_same_second_read(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """A version read in the second it was written is re-read (a same-second rotation has the same `updated`)."""
    url, versions = _vault(fake, ["one", "two"], age_seconds=0)
    provider = make_provider(vault_url=url)
    for name in versions:
        provider.fetch(Request(name))
    fresh = fake.set_secret(url, "two", "same second")
    assert latest(provider, list(versions)) == {**versions, "two": fresh}
    assert _lists(fake, url) == 0


def test_cheap_check_stops_paging_when_gets_are_cheaper(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """With the wanted secrets deep in a large vault, paging stops and each is read directly."""
    url, versions = _vault(fake, [f"s{i:03d}" for i in range(100)])
    provider = make_provider(vault_url=url)
    wanted = ["s098", "s099"]
    for name in wanted:
        provider.fetch(Request(name))
    assert latest(provider, wanted) == {n: versions[n] for n in wanted}
    assert _lists(fake, url) == 2  # not the 4 pages a full listing takes
    assert all(secret_gets(fake, url, n) == 2 for n in wanted)


def test_cheap_check_reports_a_deleted_secret(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """A name absent from the listing is read directly and reported as not found."""
    url, versions = _vault(fake, ["kept", "other"])
    provider = make_provider(vault_url=url)
    for name in versions:
        provider.fetch(Request(name))
    fake.state.vaults[url.removeprefix("https://")].pop("other")
    out = latest(provider, ["kept", "other"])
    assert out["kept"] == versions["kept"]
    assert isinstance(out["other"], SecretNotFound)


def test_cheap_check_without_list_permission(
    make_provider: MakeProvider, fake: FakeKeyVault, caplog: pytest.LogCaptureFixture
) -> None:
    """Without secrets/list the check reads each secret, says so once, and stops trying to list."""
    url, versions = _vault(fake, ["left", "right"])
    provider = make_provider(vault_url=url)
    for name in versions:
        provider.fetch(Request(name))
    fake.state.list_denied = True
    try:
        with caplog.at_level(logging.INFO, logger="secrets_bridge.providers.azure_keyvault"):
            assert latest(provider, list(versions)) == versions
            assert latest(provider, list(versions)) == versions
    finally:
        fake.state.list_denied = False
    assert [s for m, p, s in fake.requests(url) if p == "/secrets"] == [403]
    assert all(secret_gets(fake, url, n) == 3 for n in versions)
    assert len([r for r in caplog.records if "secrets/list refused" in r.getMessage()]) == 1
    provider.list_fallback.reprobe_seconds = 0  # the permission was granted: the next check lists again
    assert latest(provider, list(versions)) == versions
    assert [s for m, p, s in fake.requests(url) if p == "/secrets"] == [403, 200]
    assert all(secret_gets(fake, url, n) == 3 for n in versions)


def test_cheap_check_listing_down_stops_calls(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """A listing that fails with 503 is Unavailable for every secret it stood for, with no GET after it."""
    url, versions = _vault(fake, ["one", "two", "three"])
    provider = make_provider(vault_url=url)
    for name in versions:
        provider.fetch(Request(name))
    before = len(fake.requests(url))
    fake.fail_next(1, 503, retry_after=9)
    out = latest(provider, list(versions))
    assert len(fake.requests(url)) == before + 1
    assert all(isinstance(o, Unavailable) and o.retry_after == 9.0 and n in str(o) for n, o in out.items())


def test_previous_skips_disabled_and_follows_rotation(make_provider: MakeProvider, fake: FakeKeyVault,
                                                      backend: KeyVaultBackend) -> None:
    """`previous` is the newest enabled version created before the current one; a disabled one is passed over."""
    url = f"https://kv-{uuid.uuid4().hex[:12]}.vault.azure.net"
    first = fake.set_secret(url, "app", "one", age_seconds=300)
    second = fake.set_secret(url, "app", "two", age_seconds=200)
    fake.set_secret(url, "app", "three", age_seconds=100)
    provider = make_provider(vault_url=url)
    previous = Request("app", PREVIOUS)
    assert provider.versions([previous])[previous] == second
    next(v for v in fake.state.vaults[url.removeprefix("https://")]["app"] if v.version == second).enabled = False
    assert provider.versions([previous])[previous] == first
    got = provider.fetch_many([previous])[previous]
    assert isinstance(got, Fetched) and (got.value, got.version) == (b"one", first)
    assert [p for m, p, s in fake.requests(url) if m == "GET" and s == 200][-2:] == [
        "/secrets/app/versions", f"/secrets/app/{first}"]


def test_fetch_many_on_a_pool_fetches_each_once(make_provider: MakeProvider, fake: FakeKeyVault) -> None:
    """A cold fetch of 40 secrets reads each exactly once, with one token and one challenge in all."""
    url, versions = _vault(fake, [f"p{i:02d}" for i in range(40)])
    provider = make_provider(vault_url=url)
    tokens = len(fake.token_requests())
    got = provider.fetch_many([Request(n) for n in versions])
    assert {r.ref: o.version for r, o in got.items() if isinstance(o, Fetched)} == versions
    assert all(secret_gets(fake, url, n) == 1 for n in versions)
    assert [s for _, _, s in fake.requests(url)].count(401) == 1
    assert len(fake.token_requests()) == tokens + 1


# -- through the engine ----------------------------------------------------------------------------------


def _engine(tmp_path: Path, ca_file: Path, secrets: str) -> Engine:
    return make_engine(tmp_path / "out", secrets,
                       providers=f"  azure: {{type: azure-keyvault, vault_url: '{VAULT_URL}', ca_cert: '{ca_file}'}}\n")


def test_engine_writes_pem_json_key_and_pin(
    backend: KeyVaultBackend, ca_file: Path, tmp_path: Path
) -> None:
    """One sync writes a PFX certificate as PEM, a JSON field and a pinned version, from the YAML config."""
    import base64

    cert_ref, db_ref, pin_ref = backend.new_ref(), backend.new_ref(), backend.new_ref()
    pfx, cert = _pfx(trustme.CA())
    backend.put(cert_ref, base64.b64encode(pfx).decode(), content_type="application/x-pkcs12")
    backend.put(db_ref, json.dumps({"password": "pw-9"}))
    v1 = backend.put(pin_ref, "first")
    backend.put(pin_ref, "second")
    engine = _engine(tmp_path, ca_file, (
        f"  tls/site.pem: {{provider: azure, ref: {cert_ref}, format: pem}}\n"
        f"  db_password: {{provider: azure, ref: {db_ref}, key: password}}\n"
        f"  pinned: {{provider: azure, ref: {pin_ref}, version: {v1}}}\n"))
    try:
        result = engine.sync()
    finally:
        engine.close()
    assert result.failed == {}
    out = tmp_path / "out"
    assert x509.load_pem_x509_certificates((out / "tls/site.pem").read_bytes())[0] == cert
    assert (out / "db_password").read_bytes() == b"pw-9"
    assert (out / "pinned").read_bytes() == b"first"


def test_engine_waits_at_least_retry_after(
    backend: KeyVaultBackend, fake: FakeKeyVault, ca_file: Path, tmp_path: Path
) -> None:
    """A throttled check keeps the file and schedules the secret no sooner than Retry-After, after one request."""
    ref = backend.new_ref()
    backend.put(ref, "steady")
    engine = _engine(tmp_path, ca_file, f"  app: {{provider: azure, ref: {ref}}}\n")
    try:
        engine.sync()
        before = secret_gets(fake, VAULT_URL, ref)
        fake.fail_next(1, 429, retry_after=30)
        now = time.monotonic()
        result = engine.cycle(list(engine.units.values()))
        (tracked,) = engine.units.values()
    finally:
        engine.close()
    assert isinstance(result.failed["app"], Unavailable)
    assert engine.schedule.next_due(tracked) - now >= 30
    assert secret_gets(fake, VAULT_URL, ref) == before + 1
    assert (tmp_path / "out" / "app").read_bytes() == b"steady"


def test_cli_sync_and_check_leak_nothing(
    backend: KeyVaultBackend, fake: FakeKeyVault, ca_file: Path, tmp_path: Path
) -> None:
    """`secrets-bridge sync` then `check` against the vault exit 0, write the file, and print no value or credential."""
    ref = backend.new_ref()
    value = unique_text()
    backend.put(ref, value)
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nrequire_tmpfs: false\nlisten: null\n"
        f"providers:\n  azure: {{type: azure-keyvault, vault_url: '{VAULT_URL}', ca_cert: '{ca_file}'}}\n"
        f"secrets:\n  app_secret: {{provider: azure, ref: {ref}}}\n")
    bridge = Bridge(config)
    bridge("sync"), bridge("check")  # each must exit 0
    assert (tmp_path / "out" / "app_secret").read_text() == value
    text = bridge.output()
    assert value not in text
    for credential in fake.credentials():
        assert credential not in text


# -- settings -------------------------------------------------------------------------------------------


def test_settings_validation() -> None:
    """vault_url must be https; exactly one client secret source; a shorthand method string; unknown fields fail."""
    settings = KeyVaultProvider.Settings
    with pytest.raises(ValidationError, match="https://"):
        settings(type="azure-keyvault", vault_url="http://kv.vault.azure.net")
    with pytest.raises(ValidationError, match="exactly one"):
        settings(type="azure-keyvault", vault_url=VAULT_URL,
                 credential={"method": "client_secret", "tenant_id": "t", "client_id": "c"})
    with pytest.raises(ValidationError):
        settings(type="azure-keyvault", vault_url=VAULT_URL, credential={"method": "managed_identity", "x": 1})
    parsed = settings(type="azure-keyvault", vault_url=VAULT_URL + "/", credential="managed_identity")
    assert parsed.vault_url == VAULT_URL and parsed.credential.method == "managed_identity"
    literal = settings(type="azure-keyvault", vault_url=VAULT_URL, credential={
        "method": "client_secret", "tenant_id": "t", "client_id": "c", "client_secret": "cs~hidden"})
    assert "cs~hidden" not in repr(literal) + str(literal) + repr(KeyVaultProvider("a", literal))

