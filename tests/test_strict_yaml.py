"""Reading the config's YAML strictly (bridge/config/strict_yaml.py): broken YAML names its line;
duplicate keys, collections as keys, huge numbers, deep nesting and alias bombs are each one
ConfigError line, never a traceback or a long wait."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from bridge.config import strict_yaml
from bridge.config.loader import parse_config
from bridge.errors import ConfigError
from tests.config_fixtures import PROVIDER, config_error
from tests.config_strategies import config_documents, to_yaml


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



def _typed(value: Any) -> Any:
    """A document with each value's type beside it (1 == True == 1.0 in Python; not here)."""
    if isinstance(value, dict):
        return ("dict", sorted((repr(_typed(k)), _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _loaded(text: str) -> Any:
    return yaml.load(text, Loader=strict_yaml._StrictLoader)


PLAIN_DOCUMENTS = [
    "", "# only a comment\n", "a: 1\n", "mode: 0400\nother: 400\nhex: 0x10\nneg: -3\nbig: 1_000\n",
    "t: [yes, no, true, False, on, off, ~, null, '', \"\"]\n", "f: [1.5, .inf, -.Inf, .nan, 1e3, 6.8523015e+5]\n",
    "d: 2026-12-06\nts: 2001-12-14t21:59:43.10-05:00\n", "s: 'quoted: #1'\nq: \"tab\\there\"\nu: ünï\n",
    "block: |\n  line one\n  line two\nfolded: >\n  a\n  b\n", "n: {a: [1, {b: [c, d]}], e: {}}\n- x\n",
    "- 1\n- [2, 3]\n- {4: five}\n", "k: v\n2: two\n1.5: x\ntrue: y\nnull: z\n", "a: =\n",
    "secrets:\n  s0: {provider: src, ref: s0}\n  s1: {provider: src, ref: s1, optional: true}\n",
]
NOT_PLAIN_DOCUMENTS = [
    "a: &x 1\nb: *x\n", "a: !!str 400\n", "a: !custom x\n", "base: &b {x: 1}\nc: {<<: *b}\n", "c: {<<: {x: 1}}\n",
    "a: 1\na: 2\n", "true: 1\n1: 2\n", "? [a]\n: 1\n", "2026-12-06: d\n", "a: 1\n---\nb: 2\n", "!!map {a: 1}\n",
]


@pytest.mark.parametrize("text", PLAIN_DOCUMENTS)
def test_a_plain_document_is_built_from_events_as_the_loader_builds_it(text: str) -> None:
    """Straight from LibYAML's events, a plain document has the loader's values and types
    (decimal integers marked, YAML 1.1 booleans, dates, floats, keys of every scalar kind)."""
    try:
        expected = _typed(_loaded(text))
    except yaml.YAMLError:  # broken: the events say so too, or leave it to the loader
        with pytest.raises(yaml.YAMLError):
            assert strict_yaml._plain(text) is strict_yaml._NOT_PLAIN
            raise yaml.YAMLError
        return
    assert _typed(strict_yaml._plain(text)) == expected


@pytest.mark.parametrize("text", NOT_PLAIN_DOCUMENTS)
def test_anything_else_goes_to_the_loader(text: str) -> None:
    """Anchors, aliases, tags, merge keys, a key twice, a collection or a date as a key, several
    documents: not built from events; the loader reads them (and says what is wrong)."""
    assert strict_yaml._plain(text) is strict_yaml._NOT_PLAIN


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_documents("/src", "/run/secrets"))
def test_generated_configs_load_alike_both_ways(doc: dict[str, Any]) -> None:
    """Generated configs (valid and hostile) load to the same values and types both ways."""
    text = to_yaml(doc)
    try:
        expected = _typed(_loaded(text))
    except yaml.YAMLError:
        return
    plain = strict_yaml._plain(text)
    if plain is not strict_yaml._NOT_PLAIN:
        assert _typed(plain) == expected
