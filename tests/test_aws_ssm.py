"""The SSM Parameter Store provider against a real moto server, over HTTP, on loopback only.

API calls are counted outside the code under test, by the counting proxy in front of moto (the
Secrets Manager tests' fixtures, imported: one moto server per module).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.errors import AccessDenied, ConfigError, ProviderError, SecretNotFound, Unavailable
from bridge.observe.metrics import REGISTRY
from bridge.provider import Fetched, Request, provider_class
from providers.aws_ssm import ParameterStoreProvider, ParameterStoreSettings
from tests import test_aws_secretsmanager as sm_tests
from tests.aws_counting_proxy import CountingProxy, ProxiedBackend
from tests.conformance import ProviderConformance
from tests.engines import make_engine
from tests.harness import Bridge
from tests.test_aws_secretsmanager import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

# The Secrets Manager tests' fixtures: moto's server, the counting proxy, the loopback-only environment.
aws_env, moto_url, proxy, counted = sm_tests.aws_env, sm_tests.moto_url, sm_tests.proxy, sm_tests.counted


def ssm(url: str) -> Any:
    """A plain boto3 client writing straight to moto (the test's side, not the provider's)."""
    return boto3.client("ssm", endpoint_url=url, region_name=REGION)


def make_provider(url: str, **fields: Any) -> ParameterStoreProvider:
    return ParameterStoreProvider("ssm", ParameterStoreSettings(region=REGION, endpoint_url=url, **fields))


def put(client: Any, name: str, value: str, kind: str = "String") -> str:
    """Write a new version; return its version number as text."""
    return str(client.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)["Version"])


def requests_total(operation: str, outcome: str) -> float:
    """The core's provider request counter for the `ssm` provider, as /metrics would show it."""
    labels = {"provider": "ssm", "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("secrets_bridge_provider_requests_total", labels) or 0.0


def value_of(outcome: Fetched | ProviderError) -> bytes:
    assert isinstance(outcome, Fetched), outcome
    return outcome.value


def new_name(prefix: str = "t") -> str:
    return f"/{prefix}/{uuid.uuid4().hex}"


class MotoBackend(ProxiedBackend):
    """Writes straight to moto; the provider under test goes through the counting proxy. SSM holds
    text only, so binary data travels as base64 text (`encoding: base64`)."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {"encoding": "base64"}

    def __init__(self, url: str, proxy: CountingProxy) -> None:
        self.client = ssm(url)
        self.proxy = proxy

    def new_ref(self) -> str:
        return new_name("conformance")

    def put(self, ref: str, value: str) -> str:
        return put(self.client, ref, value, "SecureString")

    def put_binary(self, ref: str, data: bytes) -> str:
        return put(self.client, ref, base64.b64encode(data).decode())

    def credentials(self) -> list[str]:
        return [ACCESS_KEY_ID, SECRET_ACCESS_KEY]


class TestConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, counted: CountingProxy) -> Iterator[ParameterStoreProvider]:
        aws = make_provider(counted.url)
        yield aws
        aws.close()

    @pytest.fixture
    def backend(self, moto_url: str, counted: CountingProxy) -> MotoBackend:
        return MotoBackend(moto_url, counted)


def test_secure_string_decrypted_and_string_list_as_text(moto_url: str, counted: CountingProxy) -> None:
    """A SecureString is read decrypted, a StringList as its text; the check decrypts nothing."""
    client = ssm(moto_url)
    secure, listed = new_name("secure"), new_name("list")
    put(client, secure, "plain-secret-text", "SecureString")
    put(client, listed, "a,b,c", "StringList")
    aws = make_provider(counted.url)
    requests = [Request(secure), Request(listed)]
    got = aws.fetch_many(requests)
    assert [value_of(got[r]) for r in requests] == [b"plain-secret-text", b"a,b,c"]
    assert counted.counts == {"GetParameters": 1}
    counted.reset()
    assert aws.versions(requests) == {requests[0]: "1", requests[1]: "1"}
    assert counted.counts == {"GetParameters": 1}


def test_version_and_label_pins(moto_url: str, counted: CountingProxy) -> None:
    """`version: 1` reads that version and never moves; a label reads its version and follows a move."""
    client, name = ssm(moto_url), new_name("pins")
    for text in ("one", "two", "three"):
        put(client, name, text)
    client.label_parameter_version(Name=name, ParameterVersion=2, Labels=["prod"])
    aws = make_provider(counted.url)
    latest, first, prod = Request(name), Request(name, "1"), Request(name, "prod")
    got = aws.fetch_many([latest, first, prod])
    assert [(value_of(got[r]), got[r].version) for r in (latest, first, prod)] == [  # type: ignore[union-attr]
        (b"three", "3"), (b"one", "1"), (b"two", "2")]
    assert counted.counts == {"GetParameters": 3}  # one name per call: answers carry no selector
    assert (aws.moves("prod"), aws.moves("1")) == (True, False)
    client.label_parameter_version(Name=name, ParameterVersion=3, Labels=["prod"])
    assert aws.versions([latest, first, prod]) == {latest: "3", first: "1", prod: "3"}
    missing = [Request(name, "9"), Request(name, "staging")]
    for outcome in aws.fetch_many(missing).values():
        assert isinstance(outcome, SecretNotFound) and name in str(outcome)


def test_single_level_name_with_or_without_slash(moto_url: str, counted: CountingProxy) -> None:
    """A name without a hierarchy is one parameter written `plain` or `/plain` (Parameter Store drops
    that slash and answers `plain`): both refs read it; each spelling and the label pin go to calls of
    their own, so an answer is never matched to the wrong selector."""
    client, name = ssm(moto_url), f"plain-{uuid.uuid4().hex}"
    put(client, name, "one")
    put(client, name, "two")
    client.label_parameter_version(Name=name, ParameterVersion=1, Labels=["old"])
    aws = make_provider(counted.url)
    requests = [Request(name), Request(f"/{name}"), Request(f"/{name}", "old")]
    got = aws.fetch_many(requests)
    assert [value_of(got[r]) for r in requests] == [b"two", b"two", b"one"]
    assert counted.counts == {"GetParameters": 3}
    assert aws.versions(requests) == dict(zip(requests, ["2", "2", "1"], strict=True))


def _engine(tmp_path: Path, url: str, secrets: str) -> Engine:
    """A started engine writing to tmp_path, with one `ssm` provider at `url`."""
    return make_engine(tmp_path, secrets,
                       providers=f"  ssm: {{type: aws-ssm, region: {REGION}, endpoint_url: '{url}'}}\n")


def test_path_writes_nested_parameters_as_subfolders(moto_url: str, counted: CountingProxy,
                                                      tmp_path: Path) -> None:
    """`files: "*"` on a path writes one file per parameter, nested names in subfolders, and follows
    an update, an addition and a removal below the path."""
    client, root = ssm(moto_url), new_name("app")
    put(client, f"{root}/top", "t")
    put(client, f"{root}/db/user", "app-user")
    put(client, f"{root}/db/password", "pw-1", "SecureString")
    put(client, f"{root}/db/replica/host", "r.example")
    engine = _engine(tmp_path, counted.url, f'  cfg: {{provider: ssm, ref: "{root}/", files: "*"}}\n')
    try:
        assert not engine.sync().failed

        def tree() -> dict[str, str]:
            return {str(p.relative_to(tmp_path / "cfg")): p.read_text()
                    for p in sorted((tmp_path / "cfg").rglob("*")) if p.is_file()}

        assert tree() == {"top": "t", "db/user": "app-user", "db/password": "pw-1", "db/replica/host": "r.example"}
        put(client, f"{root}/db/password", "pw-2", "SecureString")
        put(client, f"{root}/api/key", "k")
        client.delete_parameter(Name=f"{root}/top")
        counted.reset()
        assert not engine.cycle(list(engine.units.values())).failed
        assert tree() == {"db/user": "app-user", "db/password": "pw-2", "db/replica/host": "r.example", "api/key": "k"}
        assert counted.counts == {"GetParametersByPath": 2}  # the check, then the read (4 parameters: 1 page)
        counted.reset()
        assert engine.cycle(list(engine.units.values())).changed == []
        assert counted.counts == {"GetParametersByPath": 1}
    finally:
        engine.close()


def test_path_name_that_is_also_a_folder_fails_alone(moto_url: str, counted: CountingProxy,
                                                      tmp_path: Path) -> None:
    """A parameter that is also the folder of others fails its `files: "*"` entry with one message
    naming both; the other entries are written, and the entry's last good files stay."""
    client, root = ssm(moto_url), new_name("clash")
    put(client, f"{root}/db/user", "u")
    put(client, f"{root}/other", "o")
    engine = _engine(tmp_path, counted.url, f'  cfg: {{provider: ssm, ref: "{root}/", files: "*"}}\n'
                                            f"  other: {{provider: ssm, ref: {root}/other}}\n")
    try:
        assert not engine.sync().failed
        put(client, f"{root}/db", "a file where a folder is")
        engine.cycle(list(engine.units.values()))
        entry = engine.entries["cfg"]
        assert entry.error is not None and "'db/user'" in str(entry.error) and "'db'" in str(entry.error)
        assert (tmp_path / "cfg" / "db" / "user").read_text() == "u" and (tmp_path / "other").read_text() == "o"
    finally:
        engine.close()


def test_path_pages_and_version_digest(moto_url: str, counted: CountingProxy) -> None:
    """A path of 23 parameters reads in 3 pages; its version changes when one parameter changes."""
    client, root = ssm(moto_url), new_name("paged")
    for i in range(23):
        put(client, f"{root}/p{i:02d}", f"v{i}")
    aws = make_provider(counted.url)
    request = Request(f"{root}/")
    fetched = aws.fetch_many([request])[request]
    assert json.loads(value_of(fetched)) == {f"p{i:02d}": f"v{i}" for i in range(23)}
    assert counted.counts == {"GetParametersByPath": 3}
    assert aws.versions([request]) == {request: fetched.version}  # type: ignore[union-attr]
    put(client, f"{root}/p05", "changed")
    assert aws.versions([request])[request] != fetched.version  # type: ignore[union-attr]
    empty = Request(f"{new_name('empty')}/")
    assert isinstance(aws.fetch_many([empty])[empty], SecretNotFound)
    pinned = Request(f"{root}/", "2")
    assert isinstance(aws.fetch_many([pinned])[pinned], SecretNotFound)


def test_twenty_seven_parameters_batch_by_ten(moto_url: str, counted: CountingProxy, tmp_path: Path) -> None:
    """27 parameters in one config: sync is 3 GetParameters calls, an unchanged cycle 3, a cycle
    with one change 3 + 1, and a deleted parameter fails alone with its last good file kept."""
    client = ssm(moto_url)
    names = [new_name("many") for _ in range(27)]
    for i, name in enumerate(names):
        put(client, name, f"value-{i}", "SecureString" if i % 2 else "String")
    secrets = "".join(f"  s{i:02d}: {{provider: ssm, ref: {name}}}\n" for i, name in enumerate(names))
    engine = _engine(tmp_path, counted.url, secrets)
    try:
        assert not engine.sync().failed
        assert counted.counts == {"GetParameters": 3}
        assert [(tmp_path / f"s{i:02d}").read_text() for i in range(27)] == [f"value-{i}" for i in range(27)]
        counted.reset()
        assert engine.cycle(list(engine.units.values())).changed == []
        assert counted.counts == {"GetParameters": 3}
        put(client, names[7], "rotated", "SecureString")
        counted.reset()
        result = engine.cycle(list(engine.units.values()))
        assert result.changed == ["s07"] and counted.counts == {"GetParameters": 4}
        assert (tmp_path / "s07").read_text() == "rotated"
        client.delete_parameter(Name=names[3])
        result = engine.cycle(list(engine.units.values()))
        assert list(result.failed) == ["s03"] and isinstance(result.failed["s03"], SecretNotFound)
        assert names[3] in str(result.failed["s03"])
        assert (tmp_path / "s03").read_text() == "value-3"
    finally:
        engine.close()


def test_engine_keeps_files_and_backs_off_when_throttled(moto_url: str, counted: CountingProxy,
                                                         tmp_path: Path) -> None:
    """Through the engine: a throttled cycle costs one request, keeps the files and waits Retry-After."""
    client = ssm(moto_url)
    names = [new_name("engine") for _ in range(3)]
    for i, name in enumerate(names):
        put(client, name, f"good-{i}")
    engine = _engine(tmp_path, counted.url, "".join(f"  s{i}: {{provider: ssm, ref: {n}}}\n"
                                                    for i, n in enumerate(names)))
    try:
        assert not engine.sync().failed
        counted.reset()
        counted.fail["*"] = (400, "ThrottlingException", "30")
        result = engine.cycle(list(engine.units.values()))
        assert sorted(result.failed) == ["s0", "s1", "s2"]
        assert all(isinstance(e, Unavailable) for e in result.failed.values())
        assert counted.counts == {"GetParameters": 1}
        assert [(tmp_path / f"s{i}").read_text() for i in range(3)] == ["good-0", "good-1", "good-2"]
        assert all(engine.schedule.next_due(u) >= time.monotonic() + 25 for u in engine.units.values())
    finally:
        engine.close()


def test_access_denied_names_ref_not_credentials(moto_url: str, counted: CountingProxy) -> None:
    """AccessDeniedException is AccessDenied naming the ref, with no value or credential in it."""
    name = new_name("denied")
    put(ssm(moto_url), name, "denied-value", "SecureString")
    aws = make_provider(counted.url)
    for code in ("AccessDeniedException", "InvalidKeyId"):
        counted.fail["GetParameters"] = (400, code, None)
        outcome = aws.fetch_many([Request(name)])[Request(name)]
        assert isinstance(outcome, AccessDenied) and name in str(outcome) and code in str(outcome)
        for text in (str(outcome), repr(outcome)):
            assert ACCESS_KEY_ID not in text and SECRET_ACCESS_KEY not in text and "denied-value" not in text


@contextmanager
def iam_enforced(url: str, unauthenticated: int) -> Iterator[None]:
    """moto checks signatures and IAM policies after the next `unauthenticated` requests, until the end."""
    def reset(count: str) -> None:
        request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=count.encode(),
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request):
            pass

    reset(str(unauthenticated))
    try:
        yield
    finally:
        reset("inf")


def test_iam_policy_denial_from_moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With moto enforcing IAM, a user allowed only GetParametersByPath is refused GetParameters
    (AccessDenied naming the parameter, no key in it) while the path it may read is written."""
    root = new_name("iam")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": "*"}]}
    iam = boto3.client("iam", endpoint_url=moto_url, region_name=REGION)
    user = f"reader-{uuid.uuid4().hex[:8]}"
    with iam_enforced(moto_url, unauthenticated=4):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="read-path", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        ssm(moto_url).put_parameter(Name=f"{root}/db", Value="iam-secret-value", Type="SecureString")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        aws = make_provider(moto_url)
        name, path = Request(f"{root}/db"), Request(f"{root}/")
        got = aws.fetch_many([name, path])
    denied = got[name]
    assert isinstance(denied, AccessDenied) and f"{root}/db" in str(denied) and "GetParameters" in str(denied)
    assert json.loads(value_of(got[path])) == {"db": "iam-secret-value"}
    for text in (str(denied), repr(denied)):
        assert key["SecretAccessKey"] not in text and key["AccessKeyId"] not in text and "iam-secret-value" not in text


@pytest.mark.parametrize(("code", "outcome"), [("AccessDeniedException", "ActionDenied"),
                                                ("ValidationException", "SecretNotFound")])
def test_one_refused_name_fails_alone(moto_url: str, counted: CountingProxy, code: str, outcome: str) -> None:
    """IAM refusing one name (or AWS rejecting one as malformed) refuses the whole GetParameters call:
    each name is then asked alone, so only that one fails, and it stays alone until a call of its own
    succeeds; an expired credential fails the batch at once, without that fan-out."""
    client = ssm(moto_url)
    names = [new_name("policy") for _ in range(4)]
    for name in names:
        put(client, name, "x")
    aws = make_provider(counted.url)
    counted.fail_containing["GetParameters"] = (names[2], (400, code, None))
    got = aws.fetch_many([Request(n) for n in names])
    assert [type(got[Request(n)]).__name__ for n in names] == ["Fetched", "Fetched", outcome, "Fetched"]
    assert names[2] in str(got[Request(names[2])]) and counted.counts == {"GetParameters": 5}
    counted.reset()  # (clears the refusal too: set it again)
    counted.fail_containing["GetParameters"] = (names[2], (400, code, None))
    again = aws.versions([Request(n) for n in names])  # the refused name is now asked alone: 2 calls
    assert [type(again[Request(n)]).__name__ for n in names] == ["str", "str", outcome, "str"]
    assert counted.counts == {"GetParameters": 2}
    counted.reset()
    counted.fail_containing.clear()  # the policy was fixed: the name succeeds alone, then batches again
    assert all(isinstance(v, str) for v in aws.versions([Request(n) for n in names]).values())
    aws.versions([Request(n) for n in names])
    assert counted.counts == {"GetParameters": 3}
    counted.reset()
    counted.fail["GetParameters"] = (400, "ExpiredTokenException", None)
    got = aws.fetch_many([Request(n) for n in names])
    assert all(isinstance(o, AccessDenied) for o in got.values()) and counted.counts == {"GetParameters": 1}


def test_web_identity_credentials(moto_url: str, counted: CountingProxy, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (EKS IRSA) get temporary credentials from STS, which
    sign the GetParameters calls (the credential chain Secrets Manager uses)."""
    name = new_name("irsa")
    put(ssm(moto_url), name, "irsa-value", "SecureString")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bridge-irsa")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", counted.url)
    aws = make_provider(counted.url)
    assert value_of(aws.fetch_many([Request(name)])[Request(name)]) == b"irsa-value"
    assert counted.counts == {"AssumeRoleWithWebIdentity": 1, "GetParameters": 1}
    (signer,) = counted.key_ids["GetParameters"]
    assert signer.startswith("ASIA")  # temporary credentials, not a static key


def test_throttling_is_unavailable_and_stops_calls(moto_url: str, counted: CountingProxy) -> None:
    """ThrottlingException: one request, every item Unavailable (paths too), Retry-After kept."""
    client = ssm(moto_url)
    names = [new_name("throttle") for _ in range(25)]
    for name in names:
        put(client, name, "x")
    aws = make_provider(counted.url)
    requests = [Request(n) for n in names] + [Request(names[0], "prod"), Request("/throttle/")]
    counted.fail["*"] = (400, "ThrottlingException", "7")
    before = requests_total("GetParameters", "unavailable")
    for outcomes in (aws.fetch_many(requests), aws.versions(requests)):
        assert all(isinstance(o, Unavailable) and o.retry_after == 7.0 for o in outcomes.values())
    assert counted.counts == {"GetParameters": 2}
    assert requests_total("GetParameters", "unavailable") == before + 2


def test_config_type_loads_this_provider(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`type: aws-ssm` finds this class; bad fields and a missing region are config errors."""
    assert provider_class("aws-ssm") is ParameterStoreProvider
    config = parse_config(
        f"providers:\n  p: {{type: aws-ssm, region: eu-west-1, endpoint_url: '{moto_url}'}}\n"
        "secrets:\n  db: {provider: p, ref: /app/db/password, version: prod}\n"
    )
    built = config.build_providers()["p"]
    assert isinstance(built, ParameterStoreProvider) and built.settings.region == "eu-west-1"
    with pytest.raises(ValidationError):
        ParameterStoreSettings(region=REGION, regoin="typo")  # type: ignore[call-arg]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="region"):
        ParameterStoreProvider("ssm", ParameterStoreSettings())
    assert "AWS_SECRET_ACCESS_KEY" in ParameterStoreProvider.credential_env
    assert ParameterStoreProvider.capabilities.cheap_versions and not ParameterStoreProvider.capabilities.previous


def test_cli_sync_check_ls_inspect(moto_url: str, tmp_path: Path) -> None:
    """The CLI as a user runs it: sync, check, ls and inspect over names, a label pin and a path,
    printing no value and no credential."""
    client, root = ssm(moto_url), new_name("cli")
    values = {f"{root}/db/password": f"pw-{uuid.uuid4().hex}", f"{root}/api/token": f"tok-{uuid.uuid4().hex}"}
    for name, value in values.items():
        put(client, name, value, "SecureString")
    client.label_parameter_version(Name=f"{root}/db/password", ParameterVersion=1, Labels=["prod"])
    out = tmp_path / "out"
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"output_dir: {out}\nrequire_tmpfs: false\nlisten: null\n"
        f"providers:\n  ssm: {{type: aws-ssm, region: {REGION}, endpoint_url: '{moto_url}'}}\n"
        f"secrets:\n  db_password: {{provider: ssm, ref: {root}/db/password, version: prod}}\n"
        f'  app: {{provider: ssm, ref: "{root}/", files: "*"}}\n')
    cli = Bridge(config, options=("--debug",),
                 env={"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY})
    cli("sync")
    assert (out / "db_password").read_text() == values[f"{root}/db/password"]
    assert (out / "app" / "api" / "token").read_text() == values[f"{root}/api/token"]
    cli("check")
    rows = {line.split()[0]: line.split() for line in cli("ls").stdout.splitlines()[1:]}
    assert {"db_password", "app/db/password", "app/api/token"} <= set(rows)
    (doc,) = json.loads(cli("inspect", "db_password").stdout)
    assert (doc["version"], doc["pinned_version"]) == ("1", "prod")
    state = (out / ".secrets-bridge-state.json").read_text()
    for text in [cli.output(), state]:
        for secret in (*values.values(), SECRET_ACCESS_KEY):
            assert secret not in text
