"""KV v1 and v2 reads (providers/vault_kv.py) against the dev server: KV v1 found and read, pinned
and `previous` versions, a secret recreated with the same version number, and the cheap metadata
check falling back to values under a data-only policy (and probed again, not fooled by a revoked
or replaced token)."""

# The fixtures are imported from tests/vault_fixtures.py (no conftest, so no other module sees them).
# ruff: noqa: F811

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest

from bridge.errors import AccessDenied, SecretNotFound
from bridge.provider import Request
from providers.vault import VaultProvider
from tests.conformance import read, unique_text
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
from tests.versions import latest, latest_one


def test_kv1_found_automatically(provider: VaultProvider, openbao, kv1: str) -> None:
    """A KV v1 mount is detected; the map is written as compact JSON and has no version."""
    openbao.client().secrets.kv.v1.create_or_update_secret(path="app/one", secret={"b": "2", "a": "1"},
                                                            mount_point=kv1)
    content, fetched = read(provider, "kv1/app/one", None, {})
    assert content == b'{"a":"1","b":"2"}'
    assert fetched.version is None
    assert latest(provider, ["kv1/app/one"])["kv1/app/one"] is None


def test_deleted_version_pin_is_not_found(provider: VaultProvider, backend: VaultBackend) -> None:
    """A pinned version that was deleted is SecretNotFound, never an empty value."""
    ref = backend.new_ref()
    v1 = backend.put(ref, unique_text())
    backend.put(ref, unique_text())
    backend.client.secrets.kv.v2.delete_secret_versions(path=ref.removeprefix("secret/"), versions=[int(v1)])
    with pytest.raises(SecretNotFound):
        read(provider, ref, v1, backend.text_fields)


def test_data_only_policy_falls_back_to_reading_values(openbao, backend: VaultBackend, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A policy granting only secret/data/* makes the check read values (logged once), not fail."""
    make_token_file(openbao, tmp_path, 'path "secret/data/*" { capabilities = ["read"] }')
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    with caplog.at_level(logging.WARNING, logger="secrets_bridge"):
        for _ in range(3):
            assert latest(p, [ref]) == {ref: None}
    assert read(p, ref, None, backend.text_fields)[0] == b"v"
    assert sum("metadata" in r.getMessage() for r in caplog.records) == 1


def test_revoked_token_does_not_switch_off_the_metadata_check(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Metadata refused because the token was revoked is not taken for a policy: with a new token
    the cheap check answers versions again."""
    ref = backend.new_ref()
    backend.put(ref, "v")
    token = make_token_file(openbao, tmp_path, POLICY)
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert latest_one(p, ref) == "1"
    openbao.client().auth.token.revoke(token)
    assert isinstance(p.versions([Request(ref)])[Request(ref)], AccessDenied | type(None))
    assert isinstance(p.fetch_many([Request(ref)])[Request(ref)], AccessDenied)  # the engine's fallback read
    time.sleep(0.01)
    make_token_file(openbao, tmp_path, POLICY)
    backend.put(ref, "w")
    assert latest_one(p, ref) == "2"


def test_data_only_policy_is_probed_again(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """After metadata_reprobe_seconds, a mount checked by reading values is probed again, so a
    widened policy brings back the cheap check."""
    name = f"p{uuid.uuid4().hex[:8]}"
    client = openbao.client()
    client.sys.create_or_update_policy(name, 'path "secret/data/*" { capabilities = ["read"] }')
    (tmp_path / "token").write_text(client.auth.token.create(policies=[name])["auth"]["client_token"])
    ref = backend.new_ref()
    backend.put(ref, "v")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    p._kv.metadata_reprobe_seconds = 0.5
    assert latest_one(p, ref) is None
    assert read(p, ref, None, backend.text_fields)[0] == b"v"  # confirms: the policy grants data only
    client.sys.create_or_update_policy(name, POLICY)
    assert latest_one(p, ref) is None  # not probed before the re-probe time
    time.sleep(0.6)
    assert latest_one(p, ref) == "1"


def test_secret_recreated_within_an_interval_is_detected(provider: VaultProvider, backend: VaultBackend) -> None:
    """Deleted (metadata and all) and written again, a secret's version number restarts; the same
    number with another created_time makes the check answer None, so the engine fetches."""
    ref = backend.new_ref()
    path = ref.removeprefix("secret/")
    backend.put(ref, "first")
    content, fetched = read(provider, ref, None, backend.text_fields)
    assert (content, fetched.version, latest_one(provider, ref)) == (b"first", "1", "1")
    time.sleep(0.01)
    backend.client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
    assert backend.put(ref, "again") == "1"
    assert latest_one(provider, ref) is None
    content, fetched = read(provider, ref, None, backend.text_fields)
    assert (content, fetched.version) == (b"again", "1")
    assert latest_one(provider, ref) == "1"  # cheap again once fetched


def test_previous_version(provider: VaultProvider, backend: VaultBackend) -> None:
    """`version: previous` is the newest live version before the current one, skipping deleted
    and destroyed versions, and moves with every new version."""
    ref = backend.new_ref()
    path = ref.removeprefix("secret/")
    for value in ("one", "two", "three", "four"):
        backend.put(ref, value)
    kv = backend.client.secrets.kv.v2
    kv.delete_secret_versions(path=path, versions=[3], mount_point="secret")
    kv.destroy_secret_versions(path=path, versions=[2], mount_point="secret")
    assert provider.capabilities.previous and provider.moves("previous") and not provider.moves("4")
    content, fetched = read(provider, ref, "previous", backend.text_fields)
    assert (content, fetched.version) == (b"one", "1")
    request = Request(ref, "previous")
    assert provider.versions([request]) == {request: "1"}
    backend.put(ref, "five")
    assert provider.versions([request]) == {request: "4"}
    assert read(provider, ref, "previous", backend.text_fields)[0] == b"four"


def test_previous_without_an_earlier_version(provider: VaultProvider, backend: VaultBackend) -> None:
    """A secret with one version has no `previous`: SecretNotFound, never the current value."""
    ref = backend.new_ref()
    backend.put(ref, "only")
    outcome = provider.fetch_many([Request(ref, "previous")])[Request(ref, "previous")]
    assert isinstance(outcome, SecretNotFound) and "no live version before" in str(outcome)


def test_previous_needs_metadata_access(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """`version: previous` with a data-only policy is one AccessDenied line saying what to grant."""
    make_token_file(openbao, tmp_path, 'path "secret/data/*" { capabilities = ["read"] }')
    ref = backend.new_ref()
    backend.put(ref, "one")
    backend.put(ref, "two")
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    outcome = p.fetch_many([Request(ref, "previous")])[Request(ref, "previous")]
    assert isinstance(outcome, AccessDenied) and "secret/metadata/*" in str(outcome) and "\n" not in str(outcome)


def test_new_token_is_not_taken_for_a_data_only_policy(openbao, backend: VaultBackend, tmp_path: Path) -> None:
    """Metadata refused to a revoked token, then a value read with the token replaced in token_file:
    the read proves nothing about the old token's refusal, so the cheap check keeps answering
    versions (it stopped for 10 minutes)."""
    ref = backend.new_ref()
    backend.put(ref, "v")
    token = make_token_file(openbao, tmp_path, POLICY)
    p = make_provider(openbao, method="token", token_file=str(tmp_path / "token"))
    assert latest_one(p, ref) == "1"
    openbao.client().auth.token.revoke(token)
    assert isinstance(p.versions([Request(ref)])[Request(ref)], AccessDenied | type(None))
    time.sleep(0.01)
    make_token_file(openbao, tmp_path, POLICY)
    assert read(p, ref, None, backend.text_fields)[0] == b"v"  # the engine's read of a failing unit
    backend.put(ref, "w")
    assert latest_one(p, ref) == "2"

