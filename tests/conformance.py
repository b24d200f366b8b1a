"""The provider conformance suite: every provider passes the same cases against a real server.

A provider's test module subclasses `ProviderConformance` and supplies two fixtures:
- `provider`: a connected `bridge.provider.Provider`;
- `backend`: an object with the `Backend` shape below, writing through the server's own API.

A backend that cannot do what a case needs says so in `unsupported` (capability -> reason), and the
case is skipped with that reason; nothing is skipped silently. Capabilities:
- `pins`: a version can be pinned (a pin to the current version id reads it);
- `history`: old versions stay readable after newer writes;
- `versions`: the provider reports version ids (without them the engine compares content);
- `outage`: the backend can be made unavailable (`outage()`), to prove the batch rule.
`version: previous` cases run when the provider class says `capabilities.previous`.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pytest

from bridge.engine.extract import extract
from bridge.errors import ProviderError, SecretNotFound, Unavailable
from bridge.provider import PREVIOUS, Fetched, Provider, Request
from tests.versions import latest


class Backend(Protocol):
    #: config fields (`key`, `encoding`) with which a value written by `put` reads back as text
    text_fields: dict[str, Any]
    #: config fields with which a value written by `put_binary` reads back as the same bytes
    binary_fields: dict[str, Any]

    def new_ref(self) -> str:
        """A ref nobody has written yet."""
        ...

    def put(self, ref: str, value: str) -> str:
        """Write a new version holding `value`; return its version id as the provider reports it."""
        ...

    def put_binary(self, ref: str, data: bytes) -> str:
        """Write a new version holding `data`; return its version id."""
        ...

    def credentials(self) -> list[str]:
        """Tokens and credentials in play, which must never show in any repr or message."""
        ...


class OutageBackend(Backend, Protocol):
    """What the `outage` capability needs, on top of `Backend`."""

    def outage(self) -> AbstractContextManager[None]:
        """While inside, the server answers every request as unavailable (or cannot be reached)."""
        ...

    def calls(self) -> int | None:
        """Requests the server has received from providers so far, counted outside the code under
        test; None where a backend cannot count them (a filesystem)."""
        ...


def needs(backend: Backend, capability: str) -> None:
    """Skip the case, with the backend's own reason, when it lacks `capability`."""
    reason = getattr(backend, "unsupported", {}).get(capability)
    if reason:
        pytest.skip(f"{capability}: {reason}")
    if capability == "outage" and not hasattr(backend, "outage"):
        pytest.skip("outage: this backend has no outage() hook yet")


def read(provider: Provider, ref: str, version: str | None, fields: dict[str, Any]) -> tuple[bytes, Fetched]:
    """Fetch through the batch interface, as the engine does, and extract the file content."""
    request = Request(ref, version)
    outcome = provider.fetch_many([request])[request]
    if isinstance(outcome, ProviderError):
        raise outcome
    content = extract(outcome, key=fields.get("key"), encoding=fields.get("encoding"), fmt=fields.get("format"))
    return content, outcome


def unique_text() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


class ProviderConformance:
    """Cases every provider passes; see the module docstring for the fixtures."""

    def test_fetch_latest(self, provider: Provider, backend: Backend) -> None:
        """The latest value and its version id come back after two writes."""
        ref = backend.new_ref()
        backend.put(ref, unique_text())
        second = unique_text()
        v2 = backend.put(ref, second)
        content, fetched = read(provider, ref, None, backend.text_fields)
        assert content == second.encode()
        assert fetched.version == v2

    def test_fetch_pinned(self, provider: Provider, backend: Backend) -> None:
        """A pinned version returns that version's value and id."""
        needs(backend, "pins")
        ref = backend.new_ref()
        first = unique_text()
        v1 = backend.put(ref, first)
        content, fetched = read(provider, ref, v1, backend.text_fields)
        assert content == first.encode()
        assert fetched.version == v1

    def test_old_pin_after_update(self, provider: Provider, backend: Backend) -> None:
        """A pin to an old version still reads the old value after newer writes."""
        needs(backend, "history")
        ref = backend.new_ref()
        first = unique_text()
        v1 = backend.put(ref, first)
        backend.put(ref, unique_text())
        backend.put(ref, unique_text())
        content, fetched = read(provider, ref, v1, backend.text_fields)
        assert content == first.encode()
        assert fetched.version == v1

    def test_not_found(self, provider: Provider, backend: Backend) -> None:
        """A missing ref is SecretNotFound for fetch and for the cheap check, naming the ref."""
        ref = backend.new_ref()
        with pytest.raises(SecretNotFound) as info:
            read(provider, ref, None, backend.text_fields)
        assert ref in str(info.value)
        outcome = latest(provider, [ref])[ref]
        assert isinstance(outcome, SecretNotFound)

    def test_cheap_check_equals_fetched_version(self, provider: Provider, backend: Backend) -> None:
        """current_versions reports the version a fetch of the latest returns, and sees a change."""
        needs(backend, "versions")
        ref = backend.new_ref()
        backend.put(ref, unique_text())
        _, fetched = read(provider, ref, None, backend.text_fields)
        assert latest(provider, [ref])[ref] == fetched.version
        v2 = backend.put(ref, unique_text())
        assert latest(provider, [ref])[ref] == v2

    def test_binary_round_trip(self, provider: Provider, backend: Backend) -> None:
        """Every byte value survives the trip unchanged."""
        ref = backend.new_ref()
        data = bytes(range(256)) * 4
        backend.put_binary(ref, data)
        content, _ = read(provider, ref, None, backend.binary_fields)
        assert content == data

    def test_repr_leaks_nothing(self, provider: Provider, backend: Backend) -> None:
        """Neither the provider, a fetched value, nor an error shows a value or credential."""
        ref = backend.new_ref()
        value = unique_text()
        backend.put(ref, value)
        _, fetched = read(provider, ref, None, backend.text_fields)
        missing = provider.fetch_many([Request(backend.new_ref())])
        texts = [repr(provider), str(provider), repr(fetched), str(fetched)]
        texts += [repr(o) + str(o) for o in missing.values()]
        texts += [repr(provider.settings), str(provider.settings)]
        for text in texts:
            assert value not in text
            for credential in backend.credentials():
                assert credential not in text

    def test_batch_errors_stay_per_item(self, provider: Provider, backend: Backend) -> None:
        """In one batch, a missing ref fails alone: the refs around it are fetched and checked as usual."""
        first, missing, last = backend.new_ref(), backend.new_ref(), backend.new_ref()
        values = {first: unique_text(), last: unique_text()}
        versions = {ref: backend.put(ref, value) for ref, value in values.items()}
        requests = [Request(first), Request(missing), Request(last)]
        got = provider.fetch_many(requests)
        assert isinstance(got[requests[1]], SecretNotFound) and missing in str(got[requests[1]])
        for request in (requests[0], requests[2]):
            outcome = got[request]
            assert isinstance(outcome, Fetched) and outcome.version == versions[request.ref]
        resolved = provider.versions(requests)
        assert isinstance(resolved[requests[1]], SecretNotFound)
        assert [resolved[requests[0]], resolved[requests[2]]] == [versions[first], versions[last]]

    def test_batch_stops_calling_after_unavailable(self, provider: Provider, backend: Backend) -> None:
        """While the backend is down, a batch makes one request: every item is Unavailable naming its own
        ref, the items not tried get a copy; once it is back, the same batch succeeds."""
        needs(backend, "outage")
        down: OutageBackend = backend  # type: ignore[assignment]
        refs = [backend.new_ref() for _ in range(4)]
        versions = [backend.put(ref, unique_text()) for ref in refs]
        requests = [Request(ref) for ref in refs]
        if not getattr(backend, "unsupported", {}).get("pins"):
            requests += [Request(ref, version) for ref, version in zip(refs[:2], versions[:2], strict=True)]
        read(provider, refs[0], None, backend.text_fields)  # connected and authenticated before the outage
        with down.outage():
            before = down.calls()
            fetched = provider.fetch_many(requests)
            during_fetch = down.calls()
            resolved = provider.versions(requests)
            after = down.calls()
        for outcomes in (fetched, resolved):
            assert all(isinstance(outcomes[r], Unavailable) and r.ref in str(outcomes[r]) for r in requests)
        if before is not None and during_fetch is not None and after is not None:
            assert (during_fetch - before, after - during_fetch) == (1, 1)
        recovered = provider.fetch_many(requests)
        assert all(isinstance(recovered[r], Fetched) for r in requests)

    def test_previous_follows_rotation(self, provider: Provider, backend: Backend) -> None:
        """`version: previous` is the version before the current one, moves with each rotation, and is
        resolved by the change check; with a single version there is no previous."""
        if not provider.capabilities.previous:
            pytest.skip(f"{type(provider).__name__} does not support version: previous (a config error)")
        assert provider.moves(PREVIOUS)
        ref = backend.new_ref()
        previous = Request(ref, PREVIOUS)
        backend.put(ref, unique_text())
        assert isinstance(provider.versions([previous])[previous], SecretNotFound)
        with pytest.raises(SecretNotFound):
            read(provider, ref, PREVIOUS, backend.text_fields)
        texts = [unique_text(), unique_text()]
        versions = [backend.put(ref, text) for text in texts]
        backend.put(ref, unique_text())
        assert provider.versions([previous, Request(ref)])[previous] == versions[1]
        content, fetched = read(provider, ref, PREVIOUS, backend.text_fields)
        assert (content, fetched.version) == (texts[1].encode(), versions[1])
        rotated = unique_text()
        newest = backend.put(ref, rotated)
        assert provider.versions([previous])[previous] != newest
        backend.put(ref, unique_text())
        assert provider.versions([previous])[previous] == newest
        content, fetched = read(provider, ref, PREVIOUS, backend.text_fields)
        assert (content, fetched.version) == (rotated.encode(), newest)
