"""Loading a configuration (bridge/config/loader.py): the file itself (missing, not UTF-8, not regular,
too large, empty), SECRETS_BRIDGE_* overrides, defaults, provider sections validated by their
provider, and every mistake one ConfigError line naming the field; fuzzed configs load or fail so."""

from __future__ import annotations

import contextlib
import math
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config.fields import (
    MAX_COMPONENT,
    MAX_DURATION_SECONDS,
    MAX_ID,
    parse_listen,
)
from bridge.config.loader import MAX_CONFIG_BYTES, Config, _validate, load_config, parse_config
from bridge.errors import ConfigError
from tests.config_fixtures import BASE, PROVIDER, config_error
from tests.config_strategies import config_documents, environments, to_yaml


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
    ("  a: 5", "secrets.a: expected a mapping of fields"),
    ("  a: [dev, a]", "secrets.a: expected a mapping of fields"),
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
    """A file naming no secrets gives the SPEC's defaults."""
    s = parse_config("secrets: {}\n").settings
    assert (str(s.output_dir), s.refresh_interval, s.jitter, s.require_tmpfs, s.listen) == (
        "/run/secrets", 300, 0.1, True, "0.0.0.0:9098")
    assert s.defaults.mode == 0o444


def test_missing_file(tmp_path: Path) -> None:
    """A missing config file says how to name one."""
    with pytest.raises(ConfigError, match="config file not found.*--config"):
        load_config(tmp_path / "nope.yaml")


def test_literal_credentials_never_echoed() -> None:
    """A validation error about a credential field never repeats its value."""
    with pytest.raises(ConfigError) as info:
        parse_config("providers:\n  v: {type: vault, address: http://x, auth: {method: approle, "
                     "role_id: [hunter2-list], secret_id: hunter2-value}}\n")
    assert "hunter2" not in str(info.value)


def test_non_string_top_level_key() -> None:
    """A number as a top-level key is an unknown field, not a crash."""
    with pytest.raises(ConfigError, match="^1: unknown field$"):
        parse_config("1: 2\n")


# --- start and reload fail closed (issue 9): every bad value is one line naming its field ---


def test_listen_null_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS_BRIDGE_LISTEN=null disables the endpoints, as `listen: null` does in YAML."""
    monkeypatch.setenv("SECRETS_BRIDGE_LISTEN", "null")
    assert parse_config("secrets: {}\n").settings.listen is None


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "'nan'", "'inf'", "true", "1e400"])
def test_jitter_must_be_finite(value: str) -> None:
    """jitter refuses inf, nan and booleans."""
    assert config_error(f"jitter: {value}\nsecrets: {{}}\n").startswith("jitter: ")


@pytest.mark.parametrize("value", [".inf", ".nan", "'1e400'", "1e300"])
def test_provider_numbers_must_be_finite(value: str) -> None:
    """A provider's timeout of inf, nan or past 10 years is refused with its path."""
    text = f"providers:\n  v: {{type: vault, address: 'http://127.0.0.1:1', timeout: {value}}}\nsecrets: {{}}\n"
    assert config_error(text).startswith("providers.v.timeout: ")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "{}\n", "null\n"])
def test_empty_config_refused(text: str) -> None:
    """An empty file (or only comments) is an error, never "zero secrets", which removes every file."""
    assert "the config file is empty" in config_error(text)


def test_explicit_empty_secrets_accepted() -> None:
    """`secrets: {}` says "none" on purpose and loads."""
    assert parse_config(PROVIDER + "secrets: {}\n").settings.secrets == {}


@pytest.mark.parametrize("variable", ["SECRETS_BRIDGE_PROVIDERS", "SECRETS_BRIDGE_SECRETS", "SECRETS_BRIDGE_DEFAULTS",
                                      "SECRETS_BRIDGE_ON_CHANGE"])
def test_malformed_json_in_environment(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """Malformed JSON in a SECRETS_BRIDGE_* variable names the variable and never echoes its value."""
    monkeypatch.setenv(variable, '{"token": "hunter2-value"')
    message = config_error(PROVIDER + "secrets: {}\n")
    assert message == f"{variable}: not valid JSON"


def test_unknown_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt SECRETS_BRIDGE_* variable is refused, as an unknown YAML field is."""
    monkeypatch.setenv("SECRETS_BRIDGE_REFRESH_INTERVALL", "30s")
    assert config_error("secrets: {}\n").startswith("SECRETS_BRIDGE_REFRESH_INTERVALL: no such setting")


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("SECRETS_BRIDGE_JITTER", "nan", "jitter"),
    ("SECRETS_BRIDGE_REFRESH_INTERVAL", "inf", "refresh_interval"),
    ("SECRETS_BRIDGE_DEFAULTS__UID", "4294967295", "defaults.uid"),
    ("SECRETS_BRIDGE_LISTEN", "localhost", "listen"),
])
def test_environment_values_validated_like_yaml(monkeypatch, variable: str, value: str, field: str) -> None:
    """Values from the environment pass the same checks as the file's."""
    monkeypatch.setenv(variable, value)
    assert config_error("secrets: {}\n").startswith(f"{field}: ")


def test_log_fields_parsed() -> None:
    """log_format and audit_log are read (default auto, no audit file)."""
    assert (parse_config("secrets: {}\n").settings.log_format, parse_config("secrets: {}\n").settings.audit_log) == (
        "auto", None)
    s = parse_config("log_format: json\naudit_log: /var/log/secrets-audit.jsonl\nsecrets: {}\n").settings
    assert (s.log_format, s.audit_log) == ("json", Path("/var/log/secrets-audit.jsonl"))


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("SECRETS_BRIDGE_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _assert_usable(config: Config) -> None:
    """What a config that loads promises the code that uses it."""
    s = config.settings
    intervals = [s.refresh_interval, s.max_staleness, *(e.refresh_interval for e in s.secrets.values())]
    assert all(v is None or 0 <= v <= MAX_DURATION_SECONDS for v in intervals)
    assert all(math.isfinite(v) for v in intervals if v is not None)
    assert 0 <= s.jitter <= 1
    for secret in s.secrets.values():
        assert all(0 <= i <= MAX_ID for i in s.owner_of(secret))
        assert 0 <= s.mode_of(secret) <= 0o777
    for name in s.secrets:
        parts = name.split("/")
        assert all(0 < len(p.encode()) <= MAX_COMPONENT for p in parts)
        assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") for c in name)
        assert not parts[0].startswith((".secrets-bridge", ".."))
    if s.listen is not None:
        parse_listen(s.listen)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=config_documents(base_dir="/tmp"), env=environments, raw=st.one_of(st.none(), st.text(max_size=200)))
def test_fuzzed_configs_load_or_fail_in_one_line(doc: dict[str, Any], env: dict[str, str], raw: str | None) -> None:
    """Random configs and SECRETS_BRIDGE_* environments: a usable Config or one ConfigError line, nothing else."""
    text = to_yaml(doc) if raw is None else raw
    with _environment(env):
        try:
            config = parse_config(text)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc)
            return
    _assert_usable(config)


def test_config_file_not_utf8(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is one line naming the byte, not a UnicodeDecodeError."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"secrets: {}\nx: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 15\)$"):
        load_config(path)


def test_config_file_must_be_a_regular_file(tmp_path: Path) -> None:
    """A FIFO or a device as the config is refused at once (a FIFO would hang start-up and reloads)."""
    fifo = tmp_path / "c.fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(ConfigError, match="not a regular file|cannot read config file"):
            load_config(path)


def test_config_file_too_large(tmp_path: Path) -> None:
    """A config file past MAX_CONFIG_BYTES is refused without parsing it."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"secrets: {}\n" + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        load_config(path)


@pytest.mark.parametrize("error", [OSError(2, "No such file"), TypeError("bad"), KeyError("k"), OverflowError("big")])
def test_provider_validator_failing_oddly_is_a_config_error(error: Exception) -> None:
    """A provider model that fails with OSError, TypeError, KeyError or OverflowError gives one ConfigError
    naming the section (so a reload rejects it instead of ending the bridge)."""
    def build() -> None:
        raise error

    with pytest.raises(ConfigError, match=rf"^providers\.v: invalid \({type(error).__name__}\)$"):
        _validate(build, ("providers", "v"))


@pytest.mark.parametrize("name", ["app.env", "app-env", "app/env", "App.Env"])
def test_env_override_reaches_an_entry_named_with_dots_dashes_or_slashes(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """SECRETS_BRIDGE_SECRETS__APP_ENV__MODE overrides the entry `app.env` (`.`, `/`, `-` folded to `_`,
    case ignored), never adding an entry `app_env`."""
    monkeypatch.setenv("SECRETS_BRIDGE_SECRETS__APP_ENV__MODE", "0400")
    config = parse_config(BASE + f"  {name!r}: {{provider: dev, ref: a, mode: '0444'}}\n")
    assert list(config.settings.secrets) == [name]
    assert config.settings.secrets[name].mode == 0o400


def test_env_override_matching_several_entries_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable that folds onto two entries names both and the JSON way, in one line."""
    monkeypatch.setenv("SECRETS_BRIDGE_SECRETS__APP_ENV__MODE", "0400")
    with pytest.raises(ConfigError, match=r"^SECRETS_BRIDGE_SECRETS__APP_ENV: matches the entries app-env, app\.env"):
        parse_config(BASE + "  app.env: {provider: dev, ref: a}\n  app-env: {provider: dev, ref: b}\n")


def test_env_json_overrides_one_entry_by_its_exact_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS_BRIDGE_SECRETS as JSON reaches any entry by its exact name, merged over the file's fields."""
    monkeypatch.setenv("SECRETS_BRIDGE_SECRETS", '{"app.env": {"mode": "0400"}}')
    config = parse_config(BASE + "  app.env: {provider: dev, ref: a, mode: '0444'}\n"
                                 "  app-env: {provider: dev, ref: b}\n")
    assert config.settings.secrets["app.env"].mode == 0o400 and config.settings.secrets["app.env"].ref == "a"
    assert config.settings.secrets["app-env"].mode != 0o400


