"""The rules every provider shares, written once in bridge/provider.py: the batch rule, the counted
call, Retry-After parsing and "permission refused: fall back, re-probe later".

These exercise the core helpers through a provider of our own (no SDK); each provider's own tests
then prove it uses them against its real server."""

from __future__ import annotations

import logging
import threading
import time
import tomllib
from email.utils import formatdate
from pathlib import Path

import pytest

from bridge.errors import AccessDenied, ConfigError, SecretNotFound, Unavailable
from bridge.observe.metrics import REGISTRY
from bridge.provider import Fetched, Provider, Request, provider_class
from bridge.provider_rules import RETRY_AFTER_CAP_SECONDS, Fallback, call, each_concurrently, retry_after_seconds
from providers import BUILT_IN


class Scripted(Provider):
    """Answers from a table: a value, or an error to raise; records every call it receives."""

    def __init__(self, name: str, answers: dict[str, object]) -> None:
        super().__init__(name, None)
        self.answers = answers
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def fetch(self, request: Request) -> Fetched:
        with self._lock:
            self.calls.append(request.ref)
        answer = self.answers[request.ref]
        if isinstance(answer, Exception):
            raise answer
        return Fetched(str(answer).encode(), "1")


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


def test_default_versions_keep_the_batch_rule() -> None:
    """The default change check (a fetch) does not call for later items once one found an outage."""
    p = Scripted("p", {"a": Unavailable("down"), "b": "x"})
    out = p.versions([Request("a"), Request("b", "7")])
    assert p.calls == ["a"] and isinstance(out[Request("b", "7")], Unavailable)


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


def test_built_in_providers_match_the_entry_points() -> None:
    """The built-in table used at start-up names exactly the entry points pyproject.toml registers,
    and each names a Provider."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["secrets_bridge.providers"] == BUILT_IN
    for name in BUILT_IN:
        assert issubclass(provider_class(name), Provider)


def test_unknown_provider_type_lists_the_known_ones() -> None:
    """A type that is neither built in nor registered is a config error naming the known types."""
    with pytest.raises(ConfigError, match=r"unknown provider type 'vaultt' \(known: .*azure-keyvault.*vault"):
        provider_class("vaultt")
