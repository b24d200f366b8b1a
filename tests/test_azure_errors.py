"""How Key Vault and identity errors become the core's taxonomy (providers/_azure_errors.py): a
disabled secret and a missing permission are AccessDenied saying so; throttling, 5xx and an
unreachable identity endpoint are Unavailable (Retry-After carried, no SDK retry, counted)."""

# The fixtures are imported from tests/azure_fixtures.py (no conftest, so no other module sees the
# Azure environment); pytest then passes them by the same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import pytest

from bridge.errors import AccessDenied, Unavailable
from bridge.observe.metrics import PROVIDER_REQUESTS
from bridge.provider import Request
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
from tests.versions import latest


def test_disabled_secret_is_access_denied(provider: KeyVaultProvider, backend: KeyVaultBackend) -> None:
    """A disabled secret is AccessDenied saying so, for fetch and for the cheap check."""
    ref = backend.new_ref()
    backend.put(ref, "off")
    backend.client.update_secret_properties(ref, enabled=False)
    with pytest.raises(AccessDenied, match=r"SecretDisabled: the secret .* is disabled"):
        provider.fetch(Request(ref))
    outcome = latest(provider, [ref])[ref]
    assert isinstance(outcome, AccessDenied) and ref in str(outcome)


def test_no_get_permission_is_access_denied(
    provider: KeyVaultProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """A 403 AccessDenied names the missing permission."""
    ref = backend.new_ref()
    backend.put(ref, "locked")
    fake.deny(ref)
    with pytest.raises(AccessDenied, match="secrets/get permission"):
        provider.fetch(Request(ref))


def test_throttling_carries_retry_after_and_is_not_retried(
    provider: KeyVaultProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """429 Throttled with Retry-After is Unavailable(retry_after) after exactly one request (no SDK retry)."""
    ref = backend.new_ref()
    backend.put(ref, "busy")
    provider.fetch(Request(ref))  # challenge and token done
    before = secret_gets(fake, VAULT_URL, ref)
    fake.fail_next(1, 429, retry_after=7)
    with pytest.raises(Unavailable) as info:
        provider.fetch(Request(ref))
    assert info.value.retry_after == 7.0
    assert "Throttled" in str(info.value)
    assert [s for m, p, s in fake.requests(VAULT_URL) if p == f"/secrets/{ref}/"][-1] == 429
    assert secret_gets(fake, VAULT_URL, ref) == before + 1
    assert provider.fetch(Request(ref)).value == b"busy"


def test_unreachable_identity_endpoint_is_unavailable(
    make_provider: MakeProvider, backend: KeyVaultBackend, fake: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token endpoint that cannot be reached is Unavailable (back off, stop the batch), not AccessDenied."""
    from tests.servers import free_port

    ref = backend.new_ref()
    backend.put(ref, "x")
    client_id, secret = fake.add_client()
    provider = make_provider(credential={"method": "client_secret", "tenant_id": fake.tenant_id,
                                         "client_id": client_id, "client_secret": secret})
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    requests = [Request(ref), Request(backend.new_ref()), Request(backend.new_ref())]
    out = provider.fetch_many(requests)
    assert all(isinstance(out[r], Unavailable) and r.ref in str(out[r]) for r in requests)
    assert secret not in str(out[requests[0]])


def test_server_error_is_unavailable(
    provider: KeyVaultProvider, backend: KeyVaultBackend, fake: FakeKeyVault
) -> None:
    """A 5xx is Unavailable after one request, and counted in the metrics by outcome."""
    def counted() -> tuple[float, ...]:
        return tuple(PROVIDER_REQUESTS.labels(provider=provider.name, operation=op, outcome=outcome)._value.get()
                     for op, outcome in (("get_secret", "ok"), ("get_secret", "unavailable"), ("get_token", "ok")))

    before = counted()
    ref = backend.new_ref()
    backend.put(ref, "flaky")
    provider.fetch(Request(ref))
    fake.fail_next(1, 503)
    with pytest.raises(Unavailable) as info:
        provider.fetch(Request(ref))
    assert info.value.retry_after is None
    assert "503" in str(info.value)
    gets_ok, gets_unavailable, tokens_ok = (a - b for a, b in zip(counted(), before, strict=True))
    assert (gets_ok, gets_unavailable, tokens_ok) == (1, 1, 1)

