"""The rules every provider shares, written once (bridge/provider_rules.py): the batch rule (stop
calling after Unavailable, one failure fanned out to each item), the counted call, error tables,
Retry-After parsing, "permission refused: fall back, re-probe later" and reading a credential file.

These exercise the core helpers through a provider of our own (no SDK); each provider's own tests
then prove it uses them against its real server."""

from __future__ import annotations

import logging
import os
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.observe.metrics import REGISTRY
from bridge.provider import Fetched, Provider, Request
from bridge.provider_rules import (
    MAX_CREDENTIAL_BYTES,
    RETRY_AFTER_CAP_SECONDS,
    ErrorMap,
    Fallback,
    call,
    each_concurrently,
    fan_out,
    read_credential,
    retry_after_seconds,
)
from tests.provider_fixtures import Scripted


def test_each_stops_after_unavailable_and_copies_the_error() -> None:
    """After an Unavailable no further call is made; each item not tried gets a copy naming its own ref."""
    p = Scripted("p", {"a": "x", "b": SecretNotFound("gone"), "c": Unavailable("down", retry_after=5.0),
                       "d": "y", "e": "z"})
    out = p.fetch_many([Request(r) for r in "abcde"])
    assert p.calls == ["a", "b", "c"]
    assert isinstance(out[Request("a")], Fetched) and isinstance(out[Request("b")], SecretNotFound)
    for ref in "de":
        copy = out[Request(ref)]
        assert isinstance(copy, Unavailable) and copy.retry_after == 5.0
        assert str(copy) == f"p: {ref}: down"


def test_each_concurrently_keeps_the_batch_rule() -> None:
    """On the pool, the first item runs alone: when it is Unavailable, no other item is called."""
    answers: dict[str, object] = {f"r{i}": f"v{i}" for i in range(20)}
    answers["r0"] = Unavailable("unreachable")
    p = Scripted("p", answers)
    out = each_concurrently(p, [(Request(r), Request(r)) for r in answers], p.fetch, workers=4)
    assert p.calls == ["r0"]
    assert all(isinstance(o, Unavailable) and f"r{i}" in str(o) for i, o in enumerate(out.values()))


def test_each_concurrently_fetches_everything_in_order() -> None:
    """Every item is fetched once; per-item errors stay per item; results keep the request order."""
    answers: dict[str, object] = {f"r{i}": f"v{i}" for i in range(30)}
    answers["r7"] = AccessDenied("no")
    p = Scripted("p", answers)
    requests = [Request(r) for r in answers]
    out = each_concurrently(p, [(r, r) for r in requests + requests], p.fetch, workers=8)
    assert list(out) == requests and sorted(p.calls) == sorted(answers)
    assert isinstance(out[Request("r7")], AccessDenied)
    assert [o.value for r, o in out.items() if isinstance(o, Fetched)] == [
        f"v{i}".encode() for i in range(30) if i != 7]


def test_each_concurrently_stops_starting_items_once_unavailable() -> None:
    """An Unavailable in the pool stops items not yet started: only the items already running were called."""
    release = threading.Event()
    calls: list[str] = []

    class Slow(Provider):
        def fetch(self, request: Request) -> Fetched:
            calls.append(request.ref)
            if request.ref == "r1":
                raise Unavailable("down")
            if request.ref != "r0":
                release.wait(10)  # holds the other worker on its item while r1 fails
            return Fetched(b"", "1")

    p = Slow("p", None)
    timer = threading.Timer(1.0, release.set)
    timer.start()
    try:
        out = each_concurrently(p, [(f"r{i}", Request(f"r{i}")) for i in range(100)], p.fetch, workers=2)
    finally:
        release.set()
        timer.cancel()
    assert {"r0", "r1"} <= set(calls) <= {"r0", "r1", "r2"}  # r2 only if the other worker began it first
    assert sum(isinstance(o, Unavailable) for o in out.values()) >= 98


def _requests(name: str, operation: str, outcome: str) -> float:
    labels = {"provider": name, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("secrets_bridge_provider_requests_total", labels) or 0.0


def test_call_counts_and_translates() -> None:
    """call counts ok and error outcomes and turns an SDK exception into the provider's error, unchained."""
    p = Scripted("counted-call", {})
    assert call(p.name, "Get", lambda: 42, translate=lambda e: Unavailable("x"), ref="a") == 42

    def boom() -> int:
        raise ConnectionResetError("wire detail with a secret")

    with pytest.raises(Unavailable) as info:
        call(p.name, "Get", boom, translate=lambda e: Unavailable(f"cannot reach ({type(e).__name__})"), ref="a",
               version="3")
    assert str(info.value) == "counted-call: a@3: cannot reach (ConnectionResetError)"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(SecretNotFound):
        call(p.name, "Get", lambda: (_ for _ in ()).throw(SecretNotFound("no")), translate=lambda e: Unavailable(""))
    assert (_requests("counted-call", "Get", "ok"), _requests("counted-call", "Get", "unavailable"),
            _requests("counted-call", "Get", "not_found")) == (1, 1, 1)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": " 2.5 "}, 2.5),
    ({"RETRY-AFTER": "-3"}, 0.0),
    ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
    ({"x-ms-retry-after-ms": "250"}, 0.25),
    ({"Retry-After": "1e12"}, RETRY_AFTER_CAP_SECONDS),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "soon"}, None),
    ({"retry-after-ms": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
    ({"Content-Type": "text/plain"}, None),
    ({}, None),
    (None, None),
])
def test_retry_after_forms(headers: dict[str, str] | None, expected: float | None) -> None:
    """Retry-After as delta-seconds and the millisecond forms; odd values never give an odd wait."""
    assert retry_after_seconds(headers) == expected


def test_retry_after_http_date() -> None:
    """An HTTP-date Retry-After is the seconds until then; a date in the past is 0."""
    ahead = retry_after_seconds({"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    assert ahead is not None and 25 <= ahead <= 31
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_fallback_logs_once_and_reprobes(caplog: pytest.LogCaptureFixture) -> None:
    """A refused call is avoided, logged once, tried again after the interval, and logged once when it works."""
    fallback = Fallback("aws", "ListSecrets", instead="one DescribeSecret per secret", reprobe_seconds=3600)
    assert fallback.allowed()
    with caplog.at_level(logging.DEBUG, logger="secrets_bridge.provider"):
        fallback.refused(AccessDenied("AccessDeniedException"))
        assert not fallback.allowed()
        fallback.reprobe_seconds = 0.0
        assert fallback.allowed()
        fallback.refused(AccessDenied("AccessDeniedException"))
        fallback.worked()
        fallback.worked()
        assert fallback.allowed() and not fallback.refused_now
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert warnings == ["aws: ListSecrets refused (access_denied: AccessDeniedException); "
                        "one DescribeSecret per secret; trying ListSecrets again every 3600s"]
    assert infos == ["aws: ListSecrets allowed again; using it"]


def test_fallback_with_confirm_waits_for_proof_and_asks_a_new_holder_afresh(caplog: pytest.LogCaptureFixture) -> None:
    """With `confirm`, a refusal is only suspected (still tried) until another call with the same
    holder works; a refusal to one holder never stops another from trying; logged once."""
    fallback = Fallback("vault", "read of secret/metadata/*", instead="reading values", confirm=True,
                        reprobe_seconds=3600)
    old, new = object(), object()
    with caplog.at_level(logging.DEBUG, logger="secrets_bridge.provider"):
        fallback.refused(AccessDenied("permission denied"), old)
        assert fallback.allowed(old) and not fallback.refused_now  # suspected: a revoked token is refused too
        fallback.confirmed(new)  # proof about another holder proves nothing
        assert fallback.allowed(old)
        fallback.confirmed(old)
        assert not fallback.allowed(old) and fallback.allowed(new) and fallback.refused_now
        fallback.refused(AccessDenied("permission denied"), old)  # at the re-probe: refused again, still refused
        assert not fallback.allowed(old)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["vault: read of secret/metadata/* refused (access_denied: permission denied); "
                        "reading values; trying read of secret/metadata/* again every 3600s"]


def test_error_map_takes_the_first_matching_row() -> None:
    """An error table maps by class, first matching row first; a class row names the exception's
    class (never its text); a ProviderError passes through; anything else is the default."""
    table = ErrorMap([
        (FileNotFoundError, SecretNotFound),
        ((PermissionError, OSError), lambda exc: AccessDenied(f"refused ({exc.errno})")),
    ])
    gone = table(FileNotFoundError(2, "hunter2 not there"))
    assert type(gone) is SecretNotFound and str(gone) == "FileNotFoundError"
    refused = table(PermissionError(13, "hunter2"))
    assert type(refused) is AccessDenied and str(refused) == "refused (13)"
    already = SecretNotFound("as raised")
    assert table(already) is already
    other = table(KeyError("hunter2"))
    assert type(other) is Unavailable and str(other) == "KeyError"


def test_fan_out_gives_each_item_its_own_copy() -> None:
    """One failed batch call becomes each item's own error: same class, message and retry_after,
    each naming its own ref and version."""
    error = Unavailable("ListSecrets: throttled", retry_after=4.0)
    out = fan_out(error, ["a", "b"], lambda key: Request(key, "v1" if key == "a" else None), provider="aws")
    assert [str(e) for e in out.values()] == ["aws: a@v1: ListSecrets: throttled", "aws: b: ListSecrets: throttled"]
    assert all(type(e) is Unavailable and e.retry_after == 4.0 and e is not error for e in out.values())


def test_read_credential_strips_and_refuses_what_is_no_credential(tmp_path: Path) -> None:
    """A credential file is read stripped; a missing file, a FIFO, a file past MAX_CREDENTIAL_BYTES or
    one not UTF-8 is AccessDenied naming what and where, at once and never quoting the content."""
    good = tmp_path / "token"
    good.write_text("  s.token-value\n")
    assert read_credential(good, "token_file") == "s.token-value"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge").write_bytes(b"x" * (MAX_CREDENTIAL_BYTES + 1))
    (tmp_path / "latin").write_bytes(b"hunter2\xff")
    cases = {"missing": "No such file or directory", "fifo": "not a regular file", "huge": "larger than 64 KiB",
             "latin": "not UTF-8 text"}
    for name, reason in cases.items():
        with pytest.raises(AccessDenied) as info:
            read_credential(tmp_path / name, "jwt_file")
        assert str(info.value) == f"cannot read jwt_file {tmp_path / name}: {reason}"
