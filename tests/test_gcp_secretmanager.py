"""The Google Cloud Secret Manager provider as a whole (providers/gcp_secretmanager.py) against the
fake TLS Secret Manager and token server (real SDK, real HTTPS): conformance, refs and payloads,
error translation, the change check, the engine and CLI over it, settings. How it connects and
authenticates is tested in test_gcp_client."""

# The fixtures are imported from tests/gcp_fixtures.py (no conftest, so no other module sees the
# Google environment); pytest then passes them by the same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.observe.metrics import PROVIDER_REQUESTS
from bridge.provider import PREVIOUS, Fetched, Request
from providers.gcp_secretmanager import BadChecksum, GcpSecretManagerProvider
from tests.conformance import ProviderConformance, unique_text
from tests.engines import make_engine
from tests.gcp_fake import FakeSecretManager
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
from tests.harness import Bridge


class TestSecretManagerConformance(ProviderConformance):
    """The shared provider cases, with Application Default Credentials (a service-account key)."""

    @pytest.fixture
    def backend(self, gcp: FakeSecretManager, ca_file: Path, key_file: Path) -> Iterator[SecretManagerBackend]:
        writer = SecretManagerBackend(gcp, ca_file, key_file)
        yield writer
        writer.close()


def _accesses(gcp: FakeSecretManager, since: int = 0) -> list[str]:
    return [p for m, p, _, _ in gcp.requests()[since:] if p.endswith(":access")]


def _metadata_reads(gcp: FakeSecretManager, since: int = 0) -> list[str]:
    return [p for m, p, _, _ in gcp.requests()[since:] if m == "GET" and not p.endswith(":access")]




# -- refs, versions, payloads ---------------------------------------------------------------------------


def test_full_resource_name_ref(make_provider: MakeProvider, backend: SecretManagerBackend,
                                gcp: FakeSecretManager) -> None:
    """`projects/P/secrets/S` reads that project's secret, by project id or number, whatever `project` says."""
    ref = backend.new_ref()
    v = backend.put(ref, "full-name")
    number = gcp.add_project(PROJECT)
    provider = make_provider(project="some-other-project")
    for full in (f"projects/{PROJECT}/secrets/{ref}", f"projects/{number}/secrets/{ref}"):
        fetched = provider.fetch(Request(full))
        assert (fetched.value, fetched.version) == (b"full-name", v)
        assert provider.versions([Request(full)])[Request(full)] == v


def test_malformed_ref_or_version_makes_no_request(provider: GcpSecretManagerProvider,
                                                   gcp: FakeSecretManager) -> None:
    """A ref that is no secret id or name, or a version that is no number, is SecretNotFound without a call."""
    before = len(gcp.requests())
    bad = [Request("has space"), Request("projects/p/secrets/a/versions/1"), Request("ok", "v1")]
    for outcomes in (provider.fetch_many(bad), provider.versions(bad)):
        assert all(isinstance(o, SecretNotFound) for o in outcomes.values())
    assert len(gcp.requests()) == before


def test_crc32c_mismatch_is_an_error_for_that_secret_only(
    provider: GcpSecretManagerProvider, backend: SecretManagerBackend, gcp: FakeSecretManager
) -> None:
    """A payload whose CRC32C does not match is refused (BadChecksum, no value); its neighbours are fetched."""
    bad, good = backend.new_ref(), backend.new_ref()
    backend.put(bad, "corrupted-in-transit")
    backend.put(good, "fine")
    gcp.state.corrupt.add(bad)
    try:
        outcomes = provider.fetch_many([Request(bad), Request(good)])
    finally:
        gcp.state.corrupt.discard(bad)
    assert isinstance(outcomes[Request(bad)], BadChecksum) and "CRC32C" in str(outcomes[Request(bad)])
    assert "corrupted-in-transit" not in repr(outcomes[Request(bad)])
    assert isinstance(outcomes[Request(good)], Fetched) and outcomes[Request(good)].value == b"fine"


@pytest.mark.parametrize("verb", ["disable", "destroy"])
def test_disabled_or_destroyed_version_is_not_found(
    provider: GcpSecretManagerProvider, backend: SecretManagerBackend, verb: str
) -> None:
    """A disabled or destroyed version (pinned, or the newest under `latest`) is SecretNotFound saying so."""
    ref = backend.new_ref()
    v1 = backend.put(ref, "one")
    v2 = backend.put(ref, "two")
    backend.set_state(ref, v1, verb)
    backend.set_state(ref, v2, verb)
    for request in (Request(ref, v1), Request(ref)):
        with pytest.raises(SecretNotFound) as info:
            provider.fetch(request)
        assert "FAILED_PRECONDITION" in str(info.value) and "disabled or destroyed" in str(info.value)
    assert isinstance(provider.versions([Request(ref)])[Request(ref)], SecretNotFound)


def test_previous_skips_disabled_versions(provider: GcpSecretManagerProvider,
                                          backend: SecretManagerBackend) -> None:
    """`previous` is the newest enabled version before the newest enabled one: disabled ones are skipped."""
    ref = backend.new_ref()
    versions = [backend.put(ref, f"value-{i}") for i in range(1, 6)]
    backend.set_state(ref, versions[4], "disable")  # newest enabled: 4
    backend.set_state(ref, versions[2], "destroy")  # before it: 3 destroyed, so 2
    fetched = provider.fetch(Request(ref, PREVIOUS))
    assert (fetched.value, fetched.version) == (b"value-2", versions[1])


def test_permission_denied_is_access_denied(provider: GcpSecretManagerProvider, backend: SecretManagerBackend,
                                            gcp: FakeSecretManager) -> None:
    """A 403 is AccessDenied naming the role to grant."""
    ref = backend.new_ref()
    backend.put(ref, "x")
    gcp.state.denied.add(ref)
    try:
        with pytest.raises(AccessDenied) as info:
            provider.fetch(Request(ref))
    finally:
        gcp.state.denied.discard(ref)
    assert "PERMISSION_DENIED" in str(info.value) and "roles/secretmanager.secretAccessor" in str(info.value)


def test_throttling_carries_retry_after_and_is_not_retried(
    provider: GcpSecretManagerProvider, backend: SecretManagerBackend, gcp: FakeSecretManager
) -> None:
    """A 429 is Unavailable with the server's Retry-After; the SDK does not retry it, and the batch stops."""
    refs = [backend.new_ref() for _ in range(3)]
    for ref in refs:
        backend.put(ref, "x")
    provider.fetch(Request(refs[0]))  # authenticated before the throttle
    gcp.fail_next(1, 429, retry_after=17)
    before = len(gcp.requests())
    outcomes = provider.versions([Request(ref) for ref in refs])
    assert len(gcp.requests()) == before + 1
    for ref in refs:
        outcome = outcomes[Request(ref)]
        assert isinstance(outcome, Unavailable) and outcome.retry_after == 17 and ref in str(outcome)
    assert "RESOURCE_EXHAUSTED" in str(outcomes[Request(refs[0])])


def test_server_error_is_unavailable(provider: GcpSecretManagerProvider, backend: SecretManagerBackend,
                                     gcp: FakeSecretManager) -> None:
    """A 503 is Unavailable, one request."""
    ref = backend.new_ref()
    backend.put(ref, "x")
    provider.fetch(Request(ref))
    gcp.fail_next(1, 503)
    before = len(gcp.requests())
    with pytest.raises(Unavailable):
        provider.fetch(Request(ref))
    assert len(gcp.requests()) == before + 1


# -- the change check -------------------------------------------------------------------------------------


def test_change_check_costs_one_access_and_hands_the_payload_to_the_fetch(
    provider: GcpSecretManagerProvider, backend: SecretManagerBackend, gcp: FakeSecretManager
) -> None:
    """Checking N unpinned secrets is N access calls and no metadata read; fetching the changed ones then
    costs nothing more (once: the rest of the check's payloads are dropped); a number pin costs nothing;
    `previous` costs one listing."""
    refs = [backend.new_ref() for _ in range(5)]
    versions = [backend.put(ref, f"v-{ref}") for ref in refs]
    new = backend.put(refs[0], "rotated")
    before = len(gcp.requests())
    requests = [Request(ref) for ref in refs] + [Request(refs[1], versions[1]), Request(refs[0], PREVIOUS)]
    resolved = provider.versions(requests)
    assert [resolved[Request(ref)] for ref in refs] == [new, *versions[1:]]
    assert resolved[Request(refs[1], versions[1])] == versions[1]
    assert resolved[Request(refs[0], PREVIOUS)] == versions[0]
    assert len(_accesses(gcp, before)) == 5 and len(_metadata_reads(gcp, before)) == 1
    after_check = len(gcp.requests())
    fetched = provider.fetch_many([Request(refs[0])])[Request(refs[0])]
    assert isinstance(fetched, Fetched) and (fetched.value, fetched.version) == (b"rotated", new)
    assert len(gcp.requests()) == after_check
    # handed over once, and the fetch dropped the check's other payloads: both cost a call now
    again = provider.fetch_many([Request(refs[0]), Request(refs[2])])
    assert all(isinstance(o, Fetched) for o in again.values()) and len(gcp.requests()) == after_check + 2


def test_calls_are_counted_by_operation(provider: GcpSecretManagerProvider, backend: SecretManagerBackend) -> None:
    """Each access and listing is counted in secrets_bridge_provider_requests_total."""
    ref = backend.new_ref()
    backend.put(ref, "a")
    backend.put(ref, "b")

    def count(operation: str) -> float:
        return PROVIDER_REQUESTS.labels(provider=provider.name, operation=operation, outcome="ok")._value.get()

    before = (count("access_secret_version"), count("list_secret_versions"))
    provider.fetch(Request(ref, PREVIOUS))
    assert (count("access_secret_version"), count("list_secret_versions")) == (before[0] + 1, before[1] + 1)


# -- the whole bridge ------------------------------------------------------------------------------------------


def test_engine_cycle_costs_one_access_per_secret_and_picks_up_a_rotation(
    backend: SecretManagerBackend, gcp: FakeSecretManager, ca_file: Path, tmp_path: Path
) -> None:
    """Through the engine: a refresh of 3 unpinned secrets and a number pin is 3 access calls, a rotation
    among them included, and the rotated file holds the new value."""
    refs = [backend.new_ref() for _ in range(3)]
    pinned = backend.put(refs[0], "pinned-one")
    for ref in refs:
        backend.put(ref, f"first-{ref}")
    secrets = ("".join(f"  f{i}: {{provider: gcp, ref: {ref}}}\n" for i, ref in enumerate(refs))
               + f"  pin: {{provider: gcp, ref: {refs[0]}, version: '{pinned}'}}\n")
    engine = make_engine(tmp_path / "out", secrets,
                         providers=f"  gcp: {{type: gcp-secretmanager, ca_cert: '{ca_file}'}}\n")
    try:
        assert engine.sync().failed == {}
        backend.put(refs[1], "rotated")
        before = len(gcp.requests())
        result = engine.cycle(list(engine.units.values()))
    finally:
        engine.close()
    assert result.failed == {}
    assert len(gcp.requests()) - before == 3 and len(_accesses(gcp, before)) == 3
    out = tmp_path / "out"
    assert [(out / n).read_text() for n in ("f0", "f1", "f2", "pin")] == [
        f"first-{refs[0]}", "rotated", f"first-{refs[2]}", "pinned-one"]


def test_engine_waits_at_least_retry_after_a_429(
    backend: SecretManagerBackend, gcp: FakeSecretManager, ca_file: Path, tmp_path: Path
) -> None:
    """A throttled check keeps the file and schedules the secret no sooner than Retry-After, after one request."""
    ref = backend.new_ref()
    backend.put(ref, "steady")
    engine = make_engine(tmp_path / "out", f"  app: {{provider: gcp, ref: {ref}}}\n",
                         providers=f"  gcp: {{type: gcp-secretmanager, ca_cert: '{ca_file}'}}\n")
    try:
        engine.sync()
        before = len(gcp.requests())
        gcp.fail_next(1, 429, retry_after=30)
        now = time.monotonic()
        result = engine.cycle(list(engine.units.values()))
        (tracked,) = engine.units.values()
    finally:
        engine.close()
    assert isinstance(result.failed["app"], Unavailable)
    assert engine.schedule.next_due(tracked) - now >= 30
    assert len(gcp.requests()) == before + 1
    assert (tmp_path / "out" / "app").read_bytes() == b"steady"


def test_cli_sync_check_ls_inspect_leak_nothing(
    backend: SecretManagerBackend, gcp: FakeSecretManager, ca_file: Path, key_file: Path, tmp_path: Path
) -> None:
    """`sync`, `check`, `ls` and `inspect` against Secret Manager exit 0, write the files (latest,
    previous, a full name), report version numbers, and print no value or credential; a corrupt
    payload fails `sync` without writing its file."""
    ref = backend.new_ref()
    old, value = unique_text(), unique_text()
    backend.put(ref, old)
    version = backend.put(ref, value)
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nrequire_tmpfs: false\nlisten: null\n"
        f"providers:\n  gcp: {{type: gcp-secretmanager, ca_cert: '{ca_file}', timeout: 10}}\n"
        f"secrets:\n  app: {{provider: gcp, ref: {ref}}}\n"
        f"  app.previous: {{provider: gcp, ref: {ref}, version: previous}}\n"
        f"  full: {{provider: gcp, ref: 'projects/{PROJECT}/secrets/{ref}', version: '1'}}\n")
    bridge = Bridge(config)
    outputs = [bridge(*command).stdout for command in (["sync"], ["check"], ["ls"], ["inspect", "app"])]
    out = tmp_path / "out"
    assert [(out / n).read_text() for n in ("app", "app.previous", "full")] == [value, old, old]
    assert ref in outputs[2]
    (record,) = json.loads(outputs[3][outputs[3].index("["):outputs[3].rindex("]") + 1])
    assert (record["ref"], record["version"]) == (ref, version)
    gcp.state.corrupt.add(ref)
    try:
        backend.put(ref, "never-written-" + uuid.uuid4().hex)
        proc = bridge("sync", check=1)
    finally:
        gcp.state.corrupt.discard(ref)
    assert "CRC32C" in proc.stderr
    assert (out / "app").read_text() == value
    key = json.loads(key_file.read_text())
    text = bridge.output()
    assert value not in text and old not in text and "never-written" not in text
    assert key["private_key_id"] not in text and "PRIVATE KEY" not in text
    for credential in gcp.credentials():
        assert credential not in text


# -- settings --------------------------------------------------------------------------------------------------


def test_settings_validation() -> None:
    """endpoint is a scheme and host (no path); `timeout` is short for timeout_seconds; unknown fields fail."""
    settings = GcpSecretManagerProvider.Settings
    with pytest.raises(ValidationError, match="https://host"):
        settings(type="gcp-secretmanager", endpoint="https://secretmanager.googleapis.com/v1")
    with pytest.raises(ValidationError):
        settings(type="gcp-secretmanager", project="Not A Project")
    with pytest.raises(ValidationError):
        settings(type="gcp-secretmanager", region="x")
    with pytest.raises(ValidationError, match="credentials do not belong"):
        settings(type="gcp-secretmanager", endpoint="https://user:pw@secretmanager.googleapis.com")
    parsed = settings(type="gcp-secretmanager", endpoint="http://localhost:8085/", timeout=5)
    assert parsed.endpoint == "http://localhost:8085" and parsed.timeout_seconds == 5
    assert settings(type="gcp-secretmanager").endpoint == "https://secretmanager.googleapis.com"


def test_built_in_and_found_only_when_configured() -> None:
    """`type: gcp-secretmanager` is a built-in provider; the extra it needs is named `gcp`; it declares
    `previous`, its SDK loggers and the credential variable it reads."""
    from bridge.provider import provider_class
    from providers import BUILT_IN, EXTRAS

    assert provider_class("gcp-secretmanager") is GcpSecretManagerProvider
    assert EXTRAS["gcp-secretmanager"] == "gcp"
    assert BUILT_IN["gcp-secretmanager"].endswith(":GcpSecretManagerProvider")
    assert GcpSecretManagerProvider.capabilities.previous
    assert "GOOGLE_APPLICATION_CREDENTIALS" in GcpSecretManagerProvider.credential_env
    assert "google" in GcpSecretManagerProvider.sdk_loggers
