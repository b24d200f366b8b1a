"""The provider conformance suite: every provider passes the same cases against a real server.

A provider's test module subclasses `ProviderConformance` and supplies two fixtures:
- `provider`: a connected `bridge.provider.Provider`;
- `backend`: an object with the `Backend` shape below, writing through the server's own API.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import pytest

from bridge.errors import ProviderError, SecretNotFound
from bridge.extract import extract
from bridge.provider import Fetched, Provider, Request


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
        ref = backend.new_ref()
        first = unique_text()
        v1 = backend.put(ref, first)
        content, fetched = read(provider, ref, v1, backend.text_fields)
        assert content == first.encode()
        assert fetched.version == v1

    def test_old_pin_after_update(self, provider: Provider, backend: Backend) -> None:
        """A pin to an old version still reads the old value after newer writes."""
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
        outcome = provider.current_versions([ref])[ref]
        assert isinstance(outcome, SecretNotFound)

    def test_cheap_check_equals_fetched_version(self, provider: Provider, backend: Backend) -> None:
        """current_versions reports the version a fetch of the latest returns, and sees a change."""
        ref = backend.new_ref()
        backend.put(ref, unique_text())
        _, fetched = read(provider, ref, None, backend.text_fields)
        assert provider.current_versions([ref])[ref] == fetched.version
        v2 = backend.put(ref, unique_text())
        assert provider.current_versions([ref])[ref] == v2

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
