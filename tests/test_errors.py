"""The error taxonomy (bridge/errors.py): each class's exit status, code and backoff as data, a
provider error's one-line form naming provider, ref and version, `at` filling in only what the
raiser did not know, and `contained` turning a provider's unexpected exception into Unavailable."""

from __future__ import annotations

import logging

import pytest

from bridge.errors import (
    AccessDenied,
    BridgeError,
    ConfigError,
    ExtractError,
    OwnerRefused,
    ProviderError,
    SecretNotFound,
    Unavailable,
    WriteError,
    contained,
)


@pytest.mark.parametrize(("error_class", "exit_status", "code", "backoff"), [
    (SecretNotFound, 1, "not_found", 4.0),
    (ExtractError, 1, "bad_value", 4.0),
    (AccessDenied, 1, "access_denied", 4.0),
    (Unavailable, 1, "unavailable", 1.0),
    (OwnerRefused, 1, "owner_refused", 4.0),
])
def test_provider_classes_carry_their_policy(error_class: type[ProviderError], exit_status: int, code: str,
                                             backoff: float) -> None:
    """Exit status, metric code and retry slowness are properties of the class, not of the message."""
    error = error_class("any text")
    assert (error.exit_status, error.code, error.backoff_factor) == (exit_status, code, backoff)
    assert isinstance(error, ProviderError) and isinstance(error, BridgeError)


def test_config_and_write_errors() -> None:
    """A bad configuration exits 2, an unusable output directory 1; neither is a provider error."""
    assert ConfigError("x").exit_status == 2 and WriteError("x").exit_status == 1
    assert not isinstance(ConfigError("x"), ProviderError) and not isinstance(WriteError("x"), ProviderError)
    assert issubclass(ExtractError, SecretNotFound)  # a value of the wrong shape keeps the last good file


def test_message_names_provider_ref_and_version() -> None:
    """The one-line form is `provider: ref@version: message`, leaving out the parts not known."""
    assert str(SecretNotFound("gone", provider="vault", ref="secret/db", version="3")) == "vault: secret/db@3: gone"
    assert str(SecretNotFound("gone", ref="secret/db")) == "secret/db: gone"
    assert str(SecretNotFound("gone")) == "gone"
    assert repr(Unavailable("down", provider="aws", ref="a")) == "Unavailable('aws: a: down')"


def test_at_fills_in_only_what_is_missing() -> None:
    """`at` adds the provider, ref and version the raiser did not know, never replacing one it did."""
    error = AccessDenied("refused", ref="kept")
    assert error.at(provider="vault", ref="other", version="2") is error
    assert (str(error), error.args) == ("vault: kept@2: refused", ("vault: kept@2: refused",))


def test_contained_tells_only_the_class_of_an_unexpected_exception(caplog: pytest.LogCaptureFixture) -> None:
    """A provider bug becomes Unavailable naming the exception's class (its text may come from an SDK);
    a ProviderError is returned as it is; a value passes through."""
    def buggy() -> bytes:
        raise KeyError("hunter2-from-an-sdk")

    with caplog.at_level(logging.INFO, logger="secrets_bridge"):
        outcome = contained("vault", buggy)
    assert isinstance(outcome, Unavailable) and str(outcome) == "vault: internal error (KeyError)"
    assert "hunter2" not in caplog.text  # the traceback goes to DEBUG only
    refused = AccessDenied("no")

    def refusing() -> bytes:
        raise refused

    assert contained("vault", refusing) is refused
    assert contained("vault", lambda: b"value") == b"value"
