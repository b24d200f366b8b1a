"""The provider seam (bridge/provider.py): the default change check keeps the batch rule, the
built-in table matches the entry points, and an unknown type names the known ones. The rules
providers share (bridge/provider_rules.py) are tested in test_provider_rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bridge.errors import ConfigError, Unavailable
from bridge.provider import Provider, Request, provider_class
from providers import BUILT_IN
from tests.provider_fixtures import Scripted


def test_default_versions_keep_the_batch_rule() -> None:
    """The default change check (a fetch) does not call for later items once one found an outage."""
    p = Scripted("p", {"a": Unavailable("down"), "b": "x"})
    out = p.versions([Request("a"), Request("b", "7")])
    assert p.calls == ["a"] and isinstance(out[Request("b", "7")], Unavailable)


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
