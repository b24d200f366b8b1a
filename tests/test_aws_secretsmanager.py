"""The AWS Secrets Manager provider against a real moto server, over HTTP, on loopback only.

API calls are counted outside the code under test, by a counting proxy in front of moto.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.engine.extract import extract
from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.observe.metrics import REGISTRY
from bridge.provider import Fetched, Request
from providers.aws_secretsmanager import SecretsManagerProvider, SecretsManagerSettings
from tests.aws_counting_proxy import CountingProxy, ProxiedBackend, start_moto, stop
from tests.conformance import ProviderConformance
from tests.engines import make_engine
from tests.versions import latest

ACCESS_KEY_ID = "AKIABRIDGETESTKEY001"
SECRET_ACCESS_KEY = "bridge-test-secret-access-key-do-not-leak"
REGION = "us-east-1"
#: a region of its own for the 500-secret tests, since ListSecrets lists every secret of a region
SCALE_REGION = "ap-southeast-2"
SCALE_N = 500


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    process, url = start_moto()
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy credentials and no way to reach anything but loopback, for this module only."""
    nowhere = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def proxy(moto_url: str) -> Iterator[CountingProxy]:
    counting = CountingProxy(moto_url)
    yield counting
    counting.close()


@pytest.fixture
def counted(proxy: CountingProxy) -> Iterator[CountingProxy]:
    """The proxy with its counts and failures cleared before and after the test."""
    proxy.reset()
    yield proxy
    proxy.reset()


def sm(url: str, region: str = REGION) -> Any:
    """A plain boto3 client writing straight to moto (the test's side, not the provider's)."""
    return boto3.client("secretsmanager", endpoint_url=url, region_name=region)


def make_provider(url: str, region: str = REGION, **fields: Any) -> SecretsManagerProvider:
    settings = SecretsManagerSettings(region=region, endpoint_url=url, **fields)
    return SecretsManagerProvider("aws", settings)


class MotoBackend(ProxiedBackend):
    """Writes straight to moto; the provider under test goes through the counting proxy."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {}

    def __init__(self, url: str, proxy: CountingProxy) -> None:
        self.client = sm(url)
        self.proxy = proxy

    def new_ref(self) -> str:
        return f"conformance/{uuid.uuid4().hex}"

    def _write(self, ref: str, **value: Any) -> str:
        try:
            return str(self.client.put_secret_value(SecretId=ref, **value)["VersionId"])
        except self.client.exceptions.ResourceNotFoundException:
            return str(self.client.create_secret(Name=ref, **value)["VersionId"])

    def put(self, ref: str, value: str) -> str:
        return self._write(ref, SecretString=value)

    def put_binary(self, ref: str, data: bytes) -> str:
        return self._write(ref, SecretBinary=data)

    def credentials(self) -> list[str]:
        return [ACCESS_KEY_ID, SECRET_ACCESS_KEY, "bridge-external-id-0451"]


class TestConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, counted: CountingProxy) -> Iterator[SecretsManagerProvider]:
        aws = make_provider(counted.url, role_arn=None)
        yield aws
        aws.close()

    @pytest.fixture
    def backend(self, moto_url: str, counted: CountingProxy) -> MotoBackend:
        return MotoBackend(moto_url, counted)


def requests_total(operation: str, outcome: str) -> float:
    """The core's provider request counter, as /metrics would show it."""
    labels = {"provider": "aws", "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("secrets_bridge_provider_requests_total", labels) or 0.0


def value_of(outcome: Fetched | ProviderError) -> bytes:
    assert isinstance(outcome, Fetched), outcome
    return outcome.value


def test_labels_follow_rotation_and_version_pin_stays(moto_url: str) -> None:
    """AWSCURRENT/AWSPREVIOUS/custom labels follow a rotation side by side; a VersionId pin stays put."""
    client, aws = sm(moto_url), make_provider(moto_url)
    ref = f"rotation/{uuid.uuid4().hex}"
    v1 = client.create_secret(Name=ref, SecretString='{"token": "one"}')["VersionId"]
    v2 = client.put_secret_value(SecretId=ref, SecretString='{"token": "two"}')["VersionId"]
    client.update_secret_version_stage(SecretId=ref, VersionStage="BLUE", MoveToVersionId=v1)
    wanted = [Request(ref, "AWSCURRENT"), Request(ref, "AWSPREVIOUS"), Request(ref, v1), Request(ref, "BLUE")]

    def files() -> list[tuple[bytes, str | None]]:
        got = aws.fetch_many(wanted)
        return [(extract(f, key="token", encoding=None, fmt=None), f.version)
                for f in (got[r] for r in wanted) if isinstance(f, Fetched)]

    assert files() == [(b"two", v2), (b"one", v1), (b"one", v1), (b"one", v1)]
    v3 = client.put_secret_value(SecretId=ref, SecretString='{"token": "three"}')["VersionId"]
    assert files() == [(b"three", v3), (b"two", v2), (b"one", v1), (b"one", v1)]
    assert latest(aws, [ref]) == {ref: v3}


@pytest.fixture(scope="module")
def scale_refs(moto_url: str) -> list[str]:
    """500 secrets in a region of their own; every fifth ref is given as an ARN, the rest by name."""
    client = sm(moto_url, SCALE_REGION)

    refs = []
    for i in range(SCALE_N):  # one at a time: moto_server can answer 500 to concurrent CreateSecret calls
        made = client.create_secret(Name=f"scale/{i:04d}", SecretString=f"value-{i}")
        refs.append(str(made["ARN"] if i % 5 == 0 else made["Name"]))
    return refs


def test_cold_fetch_of_500_uses_batches(counted: CountingProxy, scale_refs: list[str]) -> None:
    """A cold fetch of 500 secrets makes at most 25 BatchGetSecretValue calls and no GetSecretValue."""
    aws = make_provider(counted.url, SCALE_REGION)
    got = aws.fetch_many([Request(ref) for ref in scale_refs])
    values = [value_of(got[Request(ref)]) for ref in scale_refs]
    assert values == [f"value-{i}".encode() for i in range(SCALE_N)]
    assert counted.counts["BatchGetSecretValue"] <= 25
    assert counted.counts["GetSecretValue"] == 0


def test_steady_state_check_of_500_lists_pages(counted: CountingProxy, moto_url: str,
                                               scale_refs: list[str]) -> None:
    """One refresh cycle over 500 unchanged secrets makes at most 5 ListSecrets calls and no value call."""
    aws = make_provider(counted.url, SCALE_REGION)
    fetched = aws.fetch_many([Request(ref) for ref in scale_refs])
    counted.reset()
    versions = latest(aws, scale_refs)
    assert versions == {ref: value.version for ref, value in ((r.ref, fetched[r]) for r in fetched)
                        if isinstance(value, Fetched)}
    assert counted.counts["ListSecrets"] <= 5
    assert counted.value_calls() == 0 and counted.counts["DescribeSecret"] == 0
    moved = sm(moto_url, SCALE_REGION).put_secret_value(SecretId="scale/0007", SecretString="rotated")
    changed = {ref for ref, v in latest(aws, scale_refs).items() if v != versions[ref]}
    assert changed == {"scale/0007"}
    assert latest(aws, ["scale/0007"]) == {"scale/0007": moved["VersionId"]}


def test_throttling_is_unavailable_and_stops_calls(moto_url: str, counted: CountingProxy) -> None:
    """ThrottlingException gives Unavailable for every item after one request: no SDK retry, no fan-out."""
    client = sm(moto_url)
    refs = [f"throttle/{uuid.uuid4().hex}" for _ in range(45)]
    for ref in refs:
        client.create_secret(Name=ref, SecretString="x")
    aws = make_provider(counted.url)
    before = requests_total("BatchGetSecretValue", "unavailable")
    counted.fail["*"] = (400, "ThrottlingException", None)
    got = aws.fetch_many([Request(ref) for ref in refs] + [Request(refs[0], "AWSPREVIOUS")])
    assert all(isinstance(o, Unavailable) for o in got.values())
    assert sum(counted.counts.values()) == 1
    assert requests_total("BatchGetSecretValue", "unavailable") == before + 1
    assert "ThrottlingException" in str(got[Request(refs[3])]) and refs[3] in str(got[Request(refs[3])])
    versions = latest(aws, refs)
    assert all(isinstance(o, Unavailable) for o in versions.values())
    assert counted.counts["ListSecrets"] == 1 and counted.counts["DescribeSecret"] == 0
    counted.fail["*"] = (400, "ThrottlingException", "7")
    single = aws.fetch_many([Request(refs[0])])[Request(refs[0])]
    assert isinstance(single, Unavailable) and single.retry_after == 7.0
    assert counted.counts["GetSecretValue"] == 1


def test_list_denied_falls_back_to_describe_logged_once(moto_url: str, counted: CountingProxy,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Where IAM denies ListSecrets, DescribeSecret answers per secret and the fallback is logged once."""
    client = sm(moto_url)
    refs = [f"nolist/{uuid.uuid4().hex}" for _ in range(3)]
    expected = {ref: client.create_secret(Name=ref, SecretString="x")["VersionId"] for ref in refs}
    aws = make_provider(counted.url)
    counted.fail["ListSecrets"] = (400, "AccessDeniedException", None)
    with caplog.at_level(logging.WARNING):
        assert latest(aws, refs) == expected
        assert latest(aws, refs) == expected
    assert counted.counts["ListSecrets"] == 1 and counted.counts["DescribeSecret"] == 6
    assert sum("ListSecrets refused" in r.getMessage() for r in caplog.records) == 1


def test_batch_denied_falls_back_to_get_logged_once(moto_url: str, counted: CountingProxy,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Where BatchGetSecretValue is denied, GetSecretValue fetches each secret and that is logged once."""
    client = sm(moto_url)
    refs = [f"nobatch/{uuid.uuid4().hex}" for _ in range(3)]
    for i, ref in enumerate(refs):
        client.create_secret(Name=ref, SecretString=f"v{i}")
    aws = make_provider(counted.url)
    counted.fail["BatchGetSecretValue"] = (400, "AccessDeniedException", None)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            got = aws.fetch_many([Request(ref) for ref in refs])
            assert [value_of(got[Request(ref)]) for ref in refs] == [b"v0", b"v1", b"v2"]
    assert counted.counts["BatchGetSecretValue"] == 1 and counted.counts["GetSecretValue"] == 6
    assert sum("BatchGetSecretValue refused" in r.getMessage() for r in caplog.records) == 1


def test_batch_denied_is_probed_again(moto_url: str, counted: CountingProxy) -> None:
    """After IAM denied BatchGetSecretValue, it is tried again once the re-probe interval has passed."""
    client = sm(moto_url)
    refs = [f"reprobe/{uuid.uuid4().hex}" for _ in range(3)]
    for i, ref in enumerate(refs):
        client.create_secret(Name=ref, SecretString=f"v{i}")
    aws = make_provider(counted.url)
    counted.fail["BatchGetSecretValue"] = (400, "AccessDeniedException", None)
    aws.fetch_many([Request(ref) for ref in refs])
    counted.fail.clear()  # the policy was fixed
    aws.fetch_many([Request(ref) for ref in refs])
    assert (counted.counts["BatchGetSecretValue"], counted.counts["GetSecretValue"]) == (1, 6)
    aws.batch_fallback.reprobe_seconds = 0
    got = aws.fetch_many([Request(ref) for ref in refs])
    assert [value_of(got[Request(ref)]) for ref in refs] == [b"v0", b"v1", b"v2"]
    assert (counted.counts["BatchGetSecretValue"], counted.counts["GetSecretValue"]) == (2, 6)


@pytest.mark.parametrize("code", ["ExpiredTokenException", "ValidationException"])
def test_batch_failing_for_other_reasons_keeps_batching(moto_url: str, counted: CountingProxy, code: str) -> None:
    """Only IAM denying the batch action itself switches batching off: an expired credential or a rejected
    request fails this batch (per item, as GetSecretValue would say), and the next cycle batches again."""
    client = sm(moto_url)
    refs = [f"keep-batch/{uuid.uuid4().hex}" for _ in range(3)]
    for ref in refs:
        client.create_secret(Name=ref, SecretString="x")
    aws = make_provider(counted.url)
    counted.fail["BatchGetSecretValue"] = (400, code, None)
    failed = aws.fetch_many([Request(ref) for ref in refs])
    if code == "ExpiredTokenException":  # every call would fail alike: one error for all, no fan-out
        assert all(isinstance(o, AccessDenied) and code in str(o) for o in failed.values())
        assert counted.counts["GetSecretValue"] == 0
    else:  # the batch request was refused as a whole: each secret is asked for on its own
        assert all(isinstance(o, Fetched) for o in failed.values())
        assert counted.counts["GetSecretValue"] == 3
    counted.fail.clear()
    got = aws.fetch_many([Request(ref) for ref in refs])
    assert all(isinstance(o, Fetched) for o in got.values())
    assert counted.counts["BatchGetSecretValue"] == 2 and aws.batch_fallback.allowed()


def test_item_errors_in_a_batch_keep_batching(moto_url: str, counted: CountingProxy) -> None:
    """A secret the batch could not return (here: missing) is that item's error; batching stays on."""
    client = sm(moto_url)
    refs = [f"item-error/{uuid.uuid4().hex}" for _ in range(2)]
    for ref in refs:
        client.create_secret(Name=ref, SecretString="x")
    requests = [Request(refs[0]), Request(f"item-error/{uuid.uuid4().hex}"), Request(refs[1])]
    aws = make_provider(counted.url)
    for _ in range(2):
        got = aws.fetch_many(requests)
        assert isinstance(got[requests[1]], SecretNotFound)
    assert counted.counts == {"BatchGetSecretValue": 2} and aws.batch_fallback.allowed()


def test_list_denied_is_probed_again(moto_url: str, counted: CountingProxy) -> None:
    """After IAM denied ListSecrets, the listing is tried again once the re-probe interval has passed."""
    client = sm(moto_url)
    refs = [f"relist/{uuid.uuid4().hex}" for _ in range(3)]
    expected = {ref: client.create_secret(Name=ref, SecretString="x")["VersionId"] for ref in refs}
    aws = make_provider(counted.url)
    counted.fail["ListSecrets"] = (400, "AccessDeniedException", None)
    assert latest(aws, refs) == expected
    counted.fail.clear()
    aws.list_fallback.reprobe_seconds = 0
    assert latest(aws, refs) == expected
    assert counted.counts["ListSecrets"] == 2 and counted.counts["DescribeSecret"] == 3


def test_list_with_expired_credentials_is_not_fanned_out(moto_url: str, counted: CountingProxy) -> None:
    """An expired credential on ListSecrets is every secret's answer at once: no DescribeSecret per secret,
    and the listing stays in use."""
    refs = [f"expired/{uuid.uuid4().hex}" for _ in range(3)]
    aws = make_provider(counted.url)
    counted.fail["ListSecrets"] = (400, "ExpiredTokenException", None)
    out = latest(aws, refs)
    assert all(isinstance(o, AccessDenied) and ref in str(o) for ref, o in out.items())
    assert counted.counts == {"ListSecrets": 1} and aws.list_fallback.allowed()


def test_engine_previous_follows_rotation(moto_url: str, counted: CountingProxy, tmp_path: Path) -> None:
    """Through the engine: `version: previous` writes the AWSPREVIOUS value and follows a rotation."""
    client = sm(moto_url)
    ref = f"engine-previous/{uuid.uuid4().hex}"
    client.create_secret(Name=ref, SecretString="one")
    client.put_secret_value(SecretId=ref, SecretString="two")
    engine = _engine(tmp_path, counted.url, f"  prev: {{provider: aws, ref: {ref}, version: previous}}\n")
    try:
        assert not engine.sync().failed
        assert (tmp_path / "prev").read_text() == "one"
        client.put_secret_value(SecretId=ref, SecretString="three")
        assert not engine.cycle(list(engine.units.values())).failed
        assert (tmp_path / "prev").read_text() == "two"
    finally:
        engine.close()


def test_batch_mixes_found_missing_arn_and_partial_arn(moto_url: str, counted: CountingProxy) -> None:
    """Names, full and partial ARNs share one batch and one listing; a missing secret fails alone."""
    client = sm(moto_url)
    made = [client.create_secret(Name=f"mixed/{uuid.uuid4().hex}", SecretString=f"m{i}") for i in range(3)]
    partial = made[2]["ARN"][:-7]
    missing = f"mixed/{uuid.uuid4().hex}"
    requests = [Request(made[0]["Name"]), Request(made[1]["ARN"]), Request(partial), Request(missing)]
    aws = make_provider(counted.url)
    got = aws.fetch_many(requests)
    assert [value_of(got[r]) for r in requests[:3]] == [b"m0", b"m1", b"m2"]
    assert isinstance(got[requests[3]], SecretNotFound) and missing in str(got[requests[3]])
    assert counted.counts == {"BatchGetSecretValue": 1}
    counted.reset()
    versions = latest(aws, [r.ref for r in requests])
    assert [versions[r.ref] for r in requests[:3]] == [m["VersionId"] for m in made]
    assert isinstance(versions[missing], SecretNotFound)
    assert counted.counts == {"ListSecrets": 1, "DescribeSecret": 1}  # only the missing one is described


def test_deleted_and_missing_versions_are_not_found(moto_url: str) -> None:
    """A secret marked for deletion and a pinned VersionId that never existed are SecretNotFound."""
    client, aws = sm(moto_url), make_provider(moto_url)
    gone = f"deleted/{uuid.uuid4().hex}"
    client.create_secret(Name=gone, SecretString="x")
    client.delete_secret(SecretId=gone, RecoveryWindowInDays=7)
    assert isinstance(aws.fetch_many([Request(gone)])[Request(gone)], SecretNotFound)
    assert isinstance(latest(aws, [gone])[gone], SecretNotFound)
    ref = f"pinned/{uuid.uuid4().hex}"
    client.create_secret(Name=ref, SecretString="x")
    absent = str(uuid.uuid4())
    outcome = aws.fetch_many([Request(ref, absent)])[Request(ref, absent)]
    assert isinstance(outcome, SecretNotFound) and absent in str(outcome)


def test_config_type_loads_this_provider(moto_url: str) -> None:
    """`type: aws-secretsmanager` in the YAML finds this class through the entry point."""
    config = parse_config(
        f"providers:\n  aws: {{type: aws-secretsmanager, region: eu-west-1, endpoint_url: '{moto_url}'}}\n"
        "secrets:\n  api_key: {provider: aws, ref: prod/api-key, key: token, version: AWSPREVIOUS}\n"
    )
    built = config.build_providers()["aws"]
    assert isinstance(built, SecretsManagerProvider) and built.settings.region == "eu-west-1"


def _engine(tmp_path: Path, url: str, secrets: str) -> Engine:
    """A started engine writing to tmp_path, with one `aws` provider at `url`."""
    return make_engine(tmp_path, secrets,
                       providers=f"  aws: {{type: aws-secretsmanager, region: {REGION}, endpoint_url: '{url}'}}\n")


def test_engine_keeps_files_and_backs_off_when_throttled(moto_url: str, counted: CountingProxy,
                                                         tmp_path: Path) -> None:
    """Through the engine: a throttled cycle costs one request, keeps the files and waits Retry-After."""
    client = sm(moto_url)
    refs = [f"engine/{uuid.uuid4().hex}" for _ in range(3)]
    for i, ref in enumerate(refs):
        client.create_secret(Name=ref, SecretString=f"good-{i}")
    secrets = "".join(f"  s{i}: {{provider: aws, ref: {ref}}}\n" for i, ref in enumerate(refs))
    engine = _engine(tmp_path, counted.url, secrets)
    try:
        assert not engine.sync().failed
        counted.reset()
        counted.fail["*"] = (400, "ThrottlingException", "30")
        result = engine.cycle(list(engine.units.values()))
        assert sorted(result.failed) == ["s0", "s1", "s2"]
        assert all(isinstance(e, Unavailable) for e in result.failed.values())
        assert sum(counted.counts.values()) == 1  # one ListSecrets, no fan-out, no SDK retry
        assert [(tmp_path / f"s{i}").read_text() for i in range(3)] == ["good-0", "good-1", "good-2"]
        assert all(engine.schedule.next_due(t) >= time.monotonic() + 25 for t in engine.units.values())
    finally:
        engine.close()


def test_engine_label_pins_follow_rotation(moto_url: str, counted: CountingProxy, tmp_path: Path) -> None:
    """Through the engine: AWSPREVIOUS and custom-label files follow a rotation, a VersionId pin stays,
    and the one change check that sees it is a single ListSecrets page."""
    client = sm(moto_url)
    ref = f"engine-labels/{uuid.uuid4().hex}"
    v1 = client.create_secret(Name=ref, SecretString="one")["VersionId"]
    client.put_secret_value(SecretId=ref, SecretString="two")
    client.update_secret_version_stage(SecretId=ref, VersionStage="BLUE", MoveToVersionId=v1)
    others = [f"engine-labels/{uuid.uuid4().hex}" for _ in range(2)]
    for other in others:
        client.create_secret(Name=other, SecretString="x")
    secrets = (f"  current: {{provider: aws, ref: {ref}}}\n"
               f"  previous: {{provider: aws, ref: {ref}, version: AWSPREVIOUS}}\n"
               f"  first: {{provider: aws, ref: {ref}, version: {v1}}}\n"
               f"  blue: {{provider: aws, ref: {ref}, version: BLUE}}\n"
               + "".join(f"  o{i}: {{provider: aws, ref: {o}}}\n" for i, o in enumerate(others)))
    engine = _engine(tmp_path, counted.url, secrets)
    try:
        assert not engine.sync().failed
        def read() -> dict[str, str]:
            return {n: (tmp_path / n).read_text() for n in ("current", "previous", "first", "blue")}

        assert read() == {"current": "two", "previous": "one", "first": "one", "blue": "one"}
        client.put_secret_value(SecretId=ref, SecretString="three")
        v4 = client.put_secret_value(SecretId=ref, SecretString="four")["VersionId"]
        client.update_secret_version_stage(SecretId=ref, VersionStage="BLUE", MoveToVersionId=v4,
                                           RemoveFromVersionId=v1)
        counted.reset()
        result = engine.cycle(list(engine.units.values()))
        assert not result.failed
        assert read() == {"current": "four", "previous": "three", "first": "one", "blue": "four"}
        assert counted.counts.get("ListSecrets", 0) >= 1 and counted.counts.get("DescribeSecret", 0) == 0
        counted.reset()
        assert engine.cycle(list(engine.units.values())).changed == []
        assert set(counted.counts) == {"ListSecrets"}  # nothing moved: no value calls at all
    finally:
        engine.close()
