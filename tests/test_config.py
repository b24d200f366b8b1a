"""Configuration parsing: durations, modes, targets, unknown fields, env overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config, parse_config, parse_duration, parse_mode
from bridge.errors import ConfigError

BASE = """
providers:
  dev: {type: file, base_dir: /tmp}
secrets:
"""


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("90", 90), (12, 12), (1.5, 1.5),
])
def test_durations(text, seconds) -> None:
    """Durations accept units and plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "m5", "-3", True, "1h 30m"])
def test_bad_durations(text) -> None:
    """Malformed durations are refused."""
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("value", "mode"), [("0400", 0o400), ("400", 0o400), (0o440, 0o440), ("0o600", 0o600), (0, 0)])
def test_modes(value, mode) -> None:
    """Modes accept octal strings and YAML octal integers."""
    assert parse_mode(value) == mode


def test_yaml_octal_mode() -> None:
    """YAML's unquoted 0400 is octal."""
    config = parse_config(BASE + "  a: {provider: dev, ref: a, mode: 0400}\n")
    assert config.settings.secrets["a"].mode == 0o400


@pytest.mark.parametrize(("entry", "message"), [
    ("  a: {provider: dev, ref: a, mode: 400}", "secrets.a.mode: mode 400 is a decimal number"),
    ("  a: {provider: dev, ref: a, mode: '0999'}", "secrets.a.mode: invalid file mode"),
    ("  a: {provider: dev, ref: a, mod: '0400'}", "secrets.a.mod: unknown field"),
    ("  a: {provider: nope, ref: a}", "secrets.a.provider: no provider named 'nope'"),
    ("  /etc/passwd: {provider: dev, ref: a}", "target must be a relative path"),
    ("  x/../y: {provider: dev, ref: a}", "must not contain '..'"),
    ("  ..data: {provider: dev, ref: a}", "must not begin with '..'"),
    ("  ...x: {provider: dev, ref: a}", "must not begin with '..'"),
    ("  ./a: {provider: dev, ref: b}", "must not have empty or '.' parts"),
    ("  tls//cert.pem: {provider: dev, ref: b}", "must not have empty or '.' parts"),
    ("  tls/: {provider: dev, ref: b}", "must not have empty or '.' parts"),
    ("  a: {provider: dev, ref: a, refresh_interval: 0}", "secrets.a.refresh_interval: Input should be greater"),
    ("  a: {provider: dev, ref: a, mode: '04755'}", "secrets.a.mode: file mode out of range"),
    ("  a: {provider: dev, ref: a}\n  a/b: {provider: dev, ref: b}", "'a' is a file, not a folder"),
    ("  a: {provider: dev, ref: a}\n  a: {provider: dev, ref: b}", "duplicate key 'a'"),
    ("  a: {provider: dev, ref: a, refresh_interval: soon}", "secrets.a.refresh_interval: invalid duration"),
    ("  a: {provider: dev}", "secrets.a.ref: required field missing"),
    ("  a: {provider: dev, ref: a, encoding: hex}", "secrets.a.encoding"),
])
def test_errors_name_the_field(entry, message) -> None:
    """Each mistake is one ConfigError line naming the field path."""
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + entry + "\n")
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_provider_section_validated_by_provider() -> None:
    """A provider's own model rejects its unknown fields, with the path."""
    with pytest.raises(ConfigError, match=r"providers\.dev\.base_dri: unknown field"):
        parse_config("providers:\n  dev: {type: file, base_dri: /x}\n")


def test_unknown_provider_type() -> None:
    """An unregistered type names the known ones."""
    with pytest.raises(ConfigError, match=r"providers\.x\.type: unknown provider type 'nope' \(known: .*vault"):
        parse_config("providers:\n  x: {type: nope}\n")


def test_unknown_top_level_field() -> None:
    """A typo at the top level is refused."""
    with pytest.raises(ConfigError, match="^refresh_intervall: unknown field$"):
        parse_config("refresh_intervall: 5m\n")


def test_env_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS_BRIDGE_* variables override the file, including nested fields."""
    monkeypatch.setenv("SECRETS_BRIDGE_REFRESH_INTERVAL", "30s")
    monkeypatch.setenv("SECRETS_BRIDGE_SECRETS__A__MODE", "0400")
    config = parse_config("refresh_interval: 5m\n" + BASE + "  a: {provider: dev, ref: a, mode: '0444'}\n")
    assert config.settings.refresh_interval == 30
    assert config.settings.secrets["a"].mode == 0o400
    assert config.settings.secrets["a"].ref == "a"


def test_defaults() -> None:
    """An empty file gives the SPEC's defaults."""
    s = parse_config("").settings
    assert (str(s.output_dir), s.refresh_interval, s.jitter, s.require_tmpfs, s.listen) == (
        "/run/secrets", 300, 0.1, True, "0.0.0.0:9098")
    assert s.defaults.mode == 0o444


def test_missing_file(tmp_path: Path) -> None:
    """A missing config file says how to name one."""
    with pytest.raises(ConfigError, match="config file not found.*--config"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line() -> None:
    """Broken YAML names the line."""
    with pytest.raises(ConfigError, match="invalid YAML: line 2"):
        parse_config("a: 1\n b: [\n")


def test_literal_credentials_never_echoed() -> None:
    """A validation error about a credential field never repeats its value."""
    with pytest.raises(ConfigError) as info:
        parse_config("providers:\n  v: {type: vault, address: http://x, auth: {method: approle, "
                     "role_id: [hunter2-list], secret_id: hunter2-value}}\n")
    assert "hunter2" not in str(info.value)


def test_on_change_needs_one_action() -> None:
    """An on_change entry must have exactly one action, naming secrets that exist."""
    with pytest.raises(ConfigError, match="on_change.0: give exactly one of"):
        parse_config("on_change:\n  - {secrets: []}\n")
    with pytest.raises(ConfigError, match="on_change.0.secrets: no secret or file named 'x'"):
        parse_config("on_change:\n  - {secrets: [x], exec: [/bin/true]}\n")


def test_unknown_signal() -> None:
    """A misspelt signal name is refused at load time."""
    with pytest.raises(ConfigError, match="unknown signal 'SIGHOP'"):
        parse_config("on_change:\n  - {signal: SIGHOP, pid_file: /run/x.pid}\n")


def test_non_string_top_level_key() -> None:
    """A number as a top-level key is an unknown field, not a crash."""
    with pytest.raises(ConfigError, match="^1: unknown field$"):
        parse_config("1: 2\n")
