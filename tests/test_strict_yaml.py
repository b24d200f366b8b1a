"""Reading the config's YAML strictly (bridge/config/strict_yaml.py): broken YAML names its line;
duplicate keys, collections as keys, huge numbers, deep nesting and alias bombs are each one
ConfigError line, never a traceback or a long wait."""

from __future__ import annotations

import time

import pytest

from bridge.config.loader import parse_config
from bridge.errors import ConfigError
from tests.config_fixtures import PROVIDER, config_error


def test_invalid_yaml_names_line() -> None:
    """Broken YAML names the line."""
    with pytest.raises(ConfigError, match="invalid YAML: line 2"):
        parse_config("a: 1\n b: [\n")


def test_integer_too_long_for_python() -> None:
    """An integer of thousands of digits is a config error, not a ValueError traceback."""
    assert "number too large" in config_error(PROVIDER + "defaults: {uid: " + "9" * 5000 + "}\nsecrets: {}\n")


def test_deep_nesting_is_a_config_error() -> None:
    """YAML nested thousands deep is refused in one line (no RecursionError)."""
    for depth in (5000, 100_000):  # over LibYAML's own limit of 1000, and Python's recursion limit
        assert "nest" in config_error("secrets: " + "[" * depth + "]" * depth + "\n")
    for shallower in ("[" * 990 + "]" * 990, "{a: " * 990 + "}" * 990):
        assert config_error(f"providers:\n  dev: {{type: file, base_dir: /tmp, x: {shallower}}}\n")


def test_collection_as_key_is_a_config_error() -> None:
    """A list used as a mapping key is refused (no TypeError)."""
    assert "mapping key must be a plain value" in config_error("? [a]\n: 1\n")


def test_alias_bomb_refused() -> None:
    """YAML aliases that expand exponentially (billion laughs) are refused in one line."""
    levels = ["_0: &l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"_{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    text = "providers:\n  dev: {type: file, base_dir: /tmp, anchors: {" + ", ".join(levels) + "}}\nsecrets: {}\n"
    assert "YAML aliases expand the document past 16 MiB" in config_error(text)
    shared = "providers:\n  a: &p {type: file, base_dir: /tmp}\n  b: *p\nsecrets: {}\n"
    assert set(parse_config(shared).settings.providers) == {"a", "b"}


def test_alias_guard_is_linear() -> None:
    """A list of 5,000 scalars repeated 9,999 times (50 M nodes expanded; the old guard walked each
    repeat again, for tens of seconds) is refused in well under a second."""
    items = ", ".join(["x"] * 5000)
    text = ("providers:\n  dev: {type: file, base_dir: /tmp, a: &a [" + items + "], b: ["
            + ", ".join(["*a"] * 9999) + "]}\nsecrets: {}\n")
    started = time.monotonic()
    assert "YAML aliases expand the document past" in config_error(text)
    assert time.monotonic() - started < 1.5


def test_scalar_alias_bomb_refused() -> None:
    """One 1 MB text repeated through aliases by 5,000 entries is refused before validation (it
    raised MemoryError there, and a running bridge exited on its reload)."""
    secrets = "".join(f"  s{i}: {{provider: dev, ref: *t}}\n" for i in range(5000))
    text = f"providers:\n  dev: {{type: file, base_dir: /tmp, x: &t {'x' * 1_000_000}}}\nsecrets:\n{secrets}"
    assert "YAML aliases expand the document past 16 MiB" in config_error(text)


def test_alias_inside_itself_refused() -> None:
    """A YAML node that contains an alias to itself is refused in one line, not walked for ever."""
    text = "providers:\n  dev: &a {type: file, x: [*a]}\nsecrets: {}\n"
    assert "refers to a node that contains it" in config_error(text)


def test_duplicate_long_key_message_stays_short() -> None:
    """A YAML error quoting a very long key stays one short line."""
    key = "k" * 5000
    message = config_error(f"secrets:\n  ? {key}\n  : {{}}\n  ? {key}\n  : {{}}\n")
    assert "duplicate key" in message and len(message) < 300

