"""How the Secret Manager provider connects (providers/_gcp_client.py), against the fake TLS Secret
Manager and token server: a service-account key file, an external account exchanged at STS, the
metadata server at GCE_METADATA_HOST, no credentials anywhere, an emulator's http:// endpoint with no
token, an explicit endpoint with its ca_cert, and an endpoint that does not answer; no key or token
shows in any message."""

# The fixtures are imported from tests/gcp_fixtures.py (no conftest, so no other module sees the
# Google environment); pytest then passes them by the same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bridge.errors import AccessDenied, Unavailable
from bridge.provider import Request
from providers.gcp_secretmanager import GcpSecretManagerProvider
from tests.gcp_fake import STS_URI, FakeSecretManager
from tests.gcp_fixtures import (  # noqa: F401 - fixtures
    PROJECT,
    MakeProvider,
    SecretManagerBackend,
    backend,
    ca_file,
    gcp,
    gcp_env,
    key_file,
    make_provider,
    provider,
)
from tests.servers import free_port


def test_service_account_key_file_uses_the_jwt_grant(
    make_provider: MakeProvider, backend: SecretManagerBackend, gcp: FakeSecretManager, tmp_path: Path
) -> None:
    """credentials_file with a service-account key signs a JWT grant the token endpoint verifies, then reads."""
    key = gcp.add_service_account(PROJECT, "explicit")
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    ref = backend.new_ref()
    backend.put(ref, "via-key")
    assert make_provider(credentials_file=str(path)).fetch(Request(ref)).value == b"via-key"
    assert gcp.token_requests()[-1] == ("service_account", key["client_email"], True)


def test_unknown_service_account_key_is_access_denied_without_the_key(
    make_provider: MakeProvider, backend: SecretManagerBackend, gcp: FakeSecretManager, tmp_path: Path
) -> None:
    """A key the token endpoint does not know (a deleted key) is AccessDenied; no key material shows."""
    key = gcp.add_service_account(PROJECT, "deleted")
    del gcp.state.service_accounts[key["client_email"]]
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    ref = backend.new_ref()
    backend.put(ref, "x")
    provider = make_provider(credentials_file=str(path))
    with pytest.raises(AccessDenied) as info:
        provider.fetch(Request(ref))
    text = str(info.value) + repr(info.value) + repr(provider.settings)
    assert ref in str(info.value) and "access token" in str(info.value)
    assert key["private_key_id"] not in text and "PRIVATE KEY" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(("content", "what"), [
    ({"type": "authorized_user", "client_id": "c", "client_secret": "s-3f9a0c", "refresh_token": "r-71be2d"},
     "a type other than the two documented"),
    ({"type": "service_account", "client_email": "x@example.iam"}, "a key with its fields missing"),
    ("not json at all s-3f9a0c", "text that is not JSON"),
])
def test_credentials_file_of_another_type_is_refused(
    make_provider: MakeProvider, backend: SecretManagerBackend, tmp_path: Path,
    content: object, what: str,
) -> None:
    """credentials_file loads only a service-account key or an external_account file, each with its
    own loader (never google-auth's load-any-type one); anything else is AccessDenied naming the
    setting, with nothing of the file in the message."""
    path = tmp_path / "creds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    ref = backend.new_ref()
    backend.put(ref, "x")
    with pytest.raises(AccessDenied, match="no usable Google credentials") as info:
        make_provider(credentials_file=str(path)).fetch(Request(ref))
    assert "s-3f9a0c" not in str(info.value) + repr(info.value) and "r-71be2d" not in str(info.value), what


def test_revoked_token_is_replaced_once(
    provider: GcpSecretManagerProvider, backend: SecretManagerBackend, gcp: FakeSecretManager
) -> None:
    """A token the server no longer accepts (401) makes the session fetch a new one and send the request again."""
    ref = backend.new_ref()
    backend.put(ref, "still-readable")
    provider.fetch(Request(ref))
    subject = gcp.requests()[-1][3]
    with gcp.state.lock:
        mine = [t for t, (_, s) in gcp.state.tokens.items() if s == subject]
        for token in mine:
            del gcp.state.tokens[token]
    tokens_before, before = len(gcp.token_requests()), len(gcp.requests())
    assert provider.fetch(Request(ref)).value == b"still-readable"
    assert len(gcp.token_requests()) == tokens_before + 1
    assert [status for _, _, status, _ in gcp.requests()[before:]] == [401, 200]


def _external_account(gcp: FakeSecretManager, tmp_path: Path, token: str | None = None) -> tuple[Path, str]:
    audience, subject_token = gcp.add_federated(PROJECT)
    token_file = tmp_path / "projected-token"
    token_file.write_text(token or subject_token)
    config = {"type": "external_account", "audience": audience,
              "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": STS_URI,
              "credential_source": {"file": str(token_file)}}
    path = tmp_path / "external-account.json"
    path.write_text(json.dumps(config))
    return path, audience


@pytest.mark.parametrize("how", ["credentials_file", "GOOGLE_APPLICATION_CREDENTIALS"])
def test_external_account_exchanges_the_subject_token_at_sts(
    make_provider: MakeProvider, backend: SecretManagerBackend, gcp: FakeSecretManager, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    """An external_account file (workload identity federation) trades its subject token at STS; the
    project of a bare secret id comes from the pool's project."""
    path, audience = _external_account(gcp, tmp_path)
    ref = backend.new_ref()
    backend.put(ref, "federated")
    if how == "credentials_file":
        provider = make_provider(credentials_file=str(path))
    else:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        provider = make_provider()
    assert provider.fetch(Request(ref)).value == b"federated"
    assert ("external_account", audience, True) in gcp.token_requests()
    assert gcp.requests()[-1][3] == f"principal:{audience}"


def test_external_account_refused_subject_token_is_access_denied(
    make_provider: MakeProvider, backend: SecretManagerBackend, gcp: FakeSecretManager, tmp_path: Path
) -> None:
    """STS refusing the subject token is AccessDenied; the token shows nowhere."""
    wrong = "eyJwrong." + uuid.uuid4().hex
    path, _ = _external_account(gcp, tmp_path, token=wrong)
    ref = backend.new_ref()
    backend.put(ref, "x")
    provider = make_provider(credentials_file=str(path), project=PROJECT)
    with pytest.raises(AccessDenied) as info:
        provider.fetch(Request(ref))
    assert wrong not in str(info.value) + repr(info.value)


def test_metadata_server_at_gce_metadata_host(
    make_provider: MakeProvider, backend: SecretManagerBackend, gcp: FakeSecretManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a key file, ADC finds the metadata server at GCE_METADATA_HOST (GKE workload identity):
    its token and its project."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    gcp.enable_metadata(PROJECT, "app@bridge-test.iam.gserviceaccount.com")
    try:
        ref = backend.new_ref()
        backend.put(ref, "from-metadata")
        assert make_provider().fetch(Request(ref)).value == b"from-metadata"
        assert gcp.token_requests()[-1] == ("metadata", "app@bridge-test.iam.gserviceaccount.com", True)
        assert gcp.requests()[-1][3] == "app@bridge-test.iam.gserviceaccount.com"
    finally:
        gcp.disable_metadata()


def test_no_credentials_anywhere_is_access_denied(
    make_provider: MakeProvider, gcp: FakeSecretManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key file, no gcloud config, no metadata server: AccessDenied naming where credentials come from."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    provider = make_provider(project=PROJECT)
    outcome = provider.fetch_many([Request("anything")])[Request("anything")]
    assert isinstance(outcome, AccessDenied) and "GOOGLE_APPLICATION_CREDENTIALS" in str(outcome)


def test_emulator_endpoint_sends_no_token(make_provider: MakeProvider, gcp: FakeSecretManager) -> None:
    """An http:// endpoint (an emulator) is called without credentials: no token travels in clear text."""
    gcp.add_version(PROJECT, "emulated", b"plain")
    before = len(gcp.requests())
    provider = make_provider(endpoint=gcp.http_endpoint, project=PROJECT)
    assert provider.fetch(Request("emulated")).value == b"plain"
    assert [s for _, _, _, s in gcp.requests()[before:]] == ["anonymous"]


def test_explicit_endpoint_and_ca_cert(make_provider: MakeProvider, backend: SecretManagerBackend,
                                       gcp: FakeSecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """`endpoint` names another host (a private endpoint), trusted through `ca_cert`; without the CA it is refused."""
    monkeypatch.delenv("HTTPS_PROXY")  # token requests still need the proxy: keep it only for them
    monkeypatch.setenv("HTTPS_PROXY", gcp.proxy_url)
    ref = backend.new_ref()
    v = backend.put(ref, "private")
    fetched = make_provider(endpoint=gcp.endpoint).fetch(Request(ref))
    assert (fetched.value, fetched.version) == (b"private", v)
    outcome = make_provider(endpoint=gcp.endpoint, ca_cert=None).fetch_many([Request(ref)])[Request(ref)]
    assert isinstance(outcome, Unavailable)


def test_unreachable_endpoint_is_unavailable(make_provider: MakeProvider) -> None:
    """A closed port is Unavailable, after one attempt."""
    provider = make_provider(endpoint=f"https://localhost:{free_port()}", timeout=2)
    outcome = provider.fetch_many([Request("a"), Request("b")])
    assert all(isinstance(o, Unavailable) for o in outcome.values())

