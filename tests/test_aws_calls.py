"""How the AWS providers talk to AWS (providers/_aws_calls.py), through Secrets Manager against moto
behind the counting proxy: the credential chain (web identity, an assumed role), the shared
settings, and the one translation of AWS error codes and botocore errors into the core's classes,
naming the ref and never a credential.

The moto server, the AWS environment and the counting proxy are test_aws_secretsmanager's fixtures."""

# The fixtures are imported from tests/test_aws_secretsmanager.py; pytest then passes them by the
# same names, which pyflakes calls redefinition.
# ruff: noqa: F811

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bridge.errors import AccessDenied, ConfigError, ProviderError, SecretNotFound, Unavailable
from bridge.provider import Request
from providers._aws_calls import ActionDenied
from providers.aws_secretsmanager import SecretsManagerProvider, SecretsManagerSettings
from tests.aws_counting_proxy import CountingProxy, free_port
from tests.test_aws_secretsmanager import (  # noqa: F401 - fixtures
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    aws_env,
    counted,
    make_provider,
    moto_url,
    proxy,
    sm,
    value_of,
)


def test_web_identity_credentials(moto_url: str, counted: CountingProxy, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (EKS IRSA) get temporary credentials from STS."""
    ref = f"irsa/{uuid.uuid4().hex}"
    sm(moto_url).create_secret(Name=ref, SecretString="irsa-value")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bridge-irsa")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", counted.url)
    aws = make_provider(counted.url)
    assert value_of(aws.fetch_many([Request(ref)])[Request(ref)]) == b"irsa-value"
    assert counted.counts["AssumeRoleWithWebIdentity"] == 1
    (signer,) = counted.key_ids["GetSecretValue"]
    assert signer.startswith("ASIA")  # temporary credentials, not a static key


def test_role_arn_is_assumed_with_external_id(moto_url: str, counted: CountingProxy,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """role_arn assumes a role with the chain's credentials; external_id never shows in a repr."""
    ref = f"role/{uuid.uuid4().hex}"
    sm(moto_url).create_secret(Name=ref, SecretString="role-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", counted.url)
    aws = make_provider(counted.url, role_arn="arn:aws:iam::123456789012:role/reader",
                        external_id=SecretStr("bridge-external-id-0451"), session_name="bridge-test")
    assert value_of(aws.fetch_many([Request(ref)])[Request(ref)]) == b"role-value"
    assert counted.counts["AssumeRole"] == 1
    assert counted.key_ids["AssumeRole"] == {ACCESS_KEY_ID}
    assert all(k.startswith("ASIA") for k in counted.key_ids["GetSecretValue"])
    assert "bridge-external-id-0451" not in repr(aws.settings) + str(aws.settings)


def test_access_denied_names_ref_not_credentials(moto_url: str, counted: CountingProxy) -> None:
    """AccessDeniedException and DecryptionFailure are AccessDenied naming the ref, without credentials."""
    ref = f"denied/{uuid.uuid4().hex}"
    sm(moto_url).create_secret(Name=ref, SecretString="denied-value")
    aws = make_provider(counted.url)
    for code in ("AccessDeniedException", "DecryptionFailure"):
        counted.fail["GetSecretValue"] = (400, code, None)
        outcome = aws.fetch_many([Request(ref)])[Request(ref)]
        assert isinstance(outcome, AccessDenied) and ref in str(outcome) and code in str(outcome)
        for text in (str(outcome), repr(outcome)):
            assert ACCESS_KEY_ID not in text and SECRET_ACCESS_KEY not in text and "denied-value" not in text


def test_unreachable_endpoint_is_unavailable() -> None:
    """A closed port is Unavailable at once (no SDK retries), not a hang or a botocore exception."""
    aws = make_provider(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    outcome = aws.fetch_many([Request("anything")])[Request("anything")]
    assert isinstance(outcome, Unavailable) and "anything" in str(outcome)


def test_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown fields, external_id without role_arn, a missing region or profile are config errors."""
    with pytest.raises(ValidationError):
        SecretsManagerSettings(region=REGION, regoin="typo")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SecretsManagerSettings(region=REGION, external_id=SecretStr("x"))
    with pytest.raises(ConfigError, match="profile"):
        SecretsManagerProvider("aws", SecretsManagerSettings(region=REGION, profile="nope"))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="region"):
        SecretsManagerProvider("aws", SecretsManagerSettings())


@pytest.mark.parametrize(("status", "code", "error_class"), [
    (400, "ResourceNotFoundException", SecretNotFound),
    (400, "ValidationException", SecretNotFound),
    (400, "AccessDeniedException", ActionDenied),
    (400, "ExpiredTokenException", AccessDenied),
    (400, "KMSDisabledException", AccessDenied),
    (500, "InternalFailure", Unavailable),
    (403, "SomeNewDenialCode", AccessDenied),
    (400, "SomeNewCode", Unavailable),
])
def test_error_codes_are_read_from_the_table(moto_url: str, counted: CountingProxy, status: int, code: str,
                                             error_class: type[ProviderError]) -> None:
    """An AWS error code becomes its core class (an unlisted one: AccessDenied on 401/403, else
    Unavailable), named with the operation and the ref; an expired credential is no ActionDenied."""
    ref = f"codes/{uuid.uuid4().hex}"
    sm(moto_url).create_secret(Name=ref, SecretString="coded-value")
    counted.fail["GetSecretValue"] = (status, code, None)
    outcome = make_provider(counted.url).fetch_many([Request(ref)])[Request(ref)]
    assert type(outcome) is error_class, outcome
    assert str(outcome) == f"aws: {ref}: GetSecretValue: {code} (HTTP {status}): {code} (test proxy)"
    assert "coded-value" not in str(outcome) + repr(outcome)


def test_signature_errors_never_echo_their_message(moto_url: str, counted: CountingProxy) -> None:
    """SignatureDoesNotMatch (whose AWS text can carry the canonical request) is named without its message."""
    ref = f"signature/{uuid.uuid4().hex}"
    sm(moto_url).create_secret(Name=ref, SecretString="x")
    counted.fail["GetSecretValue"] = (403, "SignatureDoesNotMatch", None)
    outcome = make_provider(counted.url).fetch_many([Request(ref)])[Request(ref)]
    assert isinstance(outcome, AccessDenied)
    assert str(outcome) == f"aws: {ref}: GetSecretValue: SignatureDoesNotMatch (HTTP 403)"
