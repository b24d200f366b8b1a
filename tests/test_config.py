"""Configuration parsing: durations, modes, targets, unknown fields, env overrides, one-line errors."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
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
    MAX_TARGET_DEPTH,
    parse_duration,
    parse_http_url,
    parse_listen,
    parse_mode,
)
from bridge.config.loader import MAX_CONFIG_BYTES, Config, _validate, load_config, parse_config
from bridge.errors import ConfigError
from tests.config_strategies import config_documents, environments, to_yaml

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
    """A file naming no secrets gives the SPEC's defaults."""
    s = parse_config("secrets: {}\n").settings
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


# --- start and reload fail closed (issue 9): every bad value is one line naming its field ---

PROVIDER = "providers:\n  dev: {type: file, base_dir: /tmp}\n"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("text", "field"), [
    ("defaults: {uid: 4294967295}\n", "defaults.uid"),
    ("defaults: {gid: 99999999999999999999}\n", "defaults.gid"),
    ("defaults: {uid: -1}\n", "defaults.uid"),
    ("defaults: {uid: true}\n", "defaults.uid"),
    ("secrets:\n  a: {provider: dev, ref: a, uid: 4294967296}\n", "secrets.a.uid"),
    ("secrets:\n  a: {provider: dev, ref: a, gid: 18446744073709551616}\n", "secrets.a.gid"),
])
def test_owner_ids_beyond_the_os_range(text: str, field: str) -> None:
    """A uid or gid chown(2) cannot take is refused at load, not by an OverflowError at the first write."""
    assert _error(PROVIDER + text).startswith(f"{field}: ")


def test_largest_owner_id_accepted() -> None:
    """2**32-2, the largest id the OS takes, is valid."""
    config = parse_config(PROVIDER + "defaults: {uid: 4294967294, gid: 0}\nsecrets: {}\n")
    assert config.settings.defaults.uid == 2**32 - 2


@pytest.mark.parametrize("listen", [
    "9098", "host:", "host:99999", "", "::1:9098", "[::zz]:9098", "[::1]", "999.1.1.1:80", "1.2.3:80",
    "my host:80", "-host:80", "host-:80", " 127.0.0.1:80", "127.0.0.1:80 ", "127.0.0.1:8O", "127.0.0.1:٩٠",
    "a..b:80", f"{'a' * 64}.example:80", "http://x:80",
])
def test_bad_listen_refused(listen: str) -> None:
    """A listen that is not HOST:PORT (an IP or DNS name, port 0-65535) is refused at load, not at bind."""
    assert _error(f"listen: {listen!r}\nsecrets: {{}}\n").startswith("listen: ")


@pytest.mark.parametrize(("listen", "parsed"), [
    ("0.0.0.0:9098", ("0.0.0.0", 9098)), ("[::1]:9098", ("::1", 9098)), (":9098", ("0.0.0.0", 9098)),
    ("localhost:65535", ("localhost", 65535)), ("metrics.internal.example:0", ("metrics.internal.example", 0)),
    ("[fe80::1%eth0]:9098", ("fe80::1%eth0", 9098)), ("127.0.0.1:9098", ("127.0.0.1", 9098)),
])
def test_listen_forms(listen: str, parsed: tuple[str, int]) -> None:
    """IPv4, bracketed IPv6, DNS names and a bare :PORT are understood."""
    assert parse_config(f"listen: {listen!r}\nsecrets: {{}}\n").settings.listen == listen
    assert parse_listen(listen) == parsed


def test_listen_null_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS_BRIDGE_LISTEN=null disables the endpoints, as `listen: null` does in YAML."""
    monkeypatch.setenv("SECRETS_BRIDGE_LISTEN", "null")
    assert parse_config("secrets: {}\n").settings.listen is None


DURATION_FIELDS = [
    ("refresh_interval: {}\nsecrets: {{}}\n", "refresh_interval"),
    ("max_staleness: {}\nsecrets: {{}}\n", "max_staleness"),
    ("secrets:\n  a: {{provider: dev, ref: a, refresh_interval: {}}}\n", "secrets.a.refresh_interval"),
    ("secrets: {{}}\non_change:\n  - {{exec: [/bin/true], timeout: {}}}\n", "on_change.0.timeout"),
]


@pytest.mark.parametrize(("template", "field"), DURATION_FIELDS)
@pytest.mark.parametrize("value", [".inf", ".nan", "'inf'", "'nan'", "'1e400'", "9" * 400, "'3651d'", "'1_0s'"])
def test_durations_overflowing_or_not_finite(template: str, field: str, value: str) -> None:
    """Every duration field refuses inf, nan and anything past 10 years, naming the field."""
    assert _error(PROVIDER + template.format(value)).startswith(f"{field}: ")


def test_ten_years_is_the_longest_duration() -> None:
    """3650 days is accepted: the bound refuses only overflow and typos."""
    assert parse_duration("3650d") == MAX_DURATION_SECONDS


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "'nan'", "'inf'", "true", "1e400"])
def test_jitter_must_be_finite(value: str) -> None:
    """jitter refuses inf, nan and booleans."""
    assert _error(f"jitter: {value}\nsecrets: {{}}\n").startswith("jitter: ")


@pytest.mark.parametrize("value", [".inf", ".nan", "'1e400'", "1e300"])
def test_provider_numbers_must_be_finite(value: str) -> None:
    """A provider's timeout of inf, nan or past 10 years is refused with its path."""
    text = f"providers:\n  v: {{type: vault, address: 'http://127.0.0.1:1', timeout: {value}}}\nsecrets: {{}}\n"
    assert _error(text).startswith("providers.v.timeout: ")


def test_integer_too_long_for_python() -> None:
    """An integer of thousands of digits is a config error, not a ValueError traceback."""
    assert "number too large" in _error(PROVIDER + "defaults: {uid: " + "9" * 5000 + "}\nsecrets: {}\n")


def test_deep_nesting_is_a_config_error() -> None:
    """YAML nested thousands deep is refused in one line (no RecursionError)."""
    for depth in (5000, 100_000):  # over LibYAML's own limit of 1000, and Python's recursion limit
        assert "nest" in _error("secrets: " + "[" * depth + "]" * depth + "\n")
    for shallower in ("[" * 990 + "]" * 990, "{a: " * 990 + "}" * 990):
        assert _error(f"providers:\n  dev: {{type: file, base_dir: /tmp, x: {shallower}}}\n")


def test_collection_as_key_is_a_config_error() -> None:
    """A list used as a mapping key is refused (no TypeError)."""
    assert "mapping key must be a plain value" in _error("? [a]\n: 1\n")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "{}\n", "null\n"])
def test_empty_config_refused(text: str) -> None:
    """An empty file (or only comments) is an error, never "zero secrets", which removes every file."""
    assert "the config file is empty" in _error(text)


def test_explicit_empty_secrets_accepted() -> None:
    """`secrets: {}` says "none" on purpose and loads."""
    assert parse_config(PROVIDER + "secrets: {}\n").settings.secrets == {}


@pytest.mark.parametrize("variable", ["SECRETS_BRIDGE_PROVIDERS", "SECRETS_BRIDGE_SECRETS", "SECRETS_BRIDGE_DEFAULTS",
                                      "SECRETS_BRIDGE_ON_CHANGE"])
def test_malformed_json_in_environment(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """Malformed JSON in a SECRETS_BRIDGE_* variable names the variable and never echoes its value."""
    monkeypatch.setenv(variable, '{"token": "hunter2-value"')
    message = _error(PROVIDER + "secrets: {}\n")
    assert message == f"{variable}: not valid JSON"


def test_unknown_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt SECRETS_BRIDGE_* variable is refused, as an unknown YAML field is."""
    monkeypatch.setenv("SECRETS_BRIDGE_REFRESH_INTERVALL", "30s")
    assert _error("secrets: {}\n").startswith("SECRETS_BRIDGE_REFRESH_INTERVALL: no such setting")


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("SECRETS_BRIDGE_JITTER", "nan", "jitter"),
    ("SECRETS_BRIDGE_REFRESH_INTERVAL", "inf", "refresh_interval"),
    ("SECRETS_BRIDGE_DEFAULTS__UID", "4294967295", "defaults.uid"),
    ("SECRETS_BRIDGE_LISTEN", "localhost", "listen"),
])
def test_environment_values_validated_like_yaml(monkeypatch, variable: str, value: str, field: str) -> None:
    """Values from the environment pass the same checks as the file's."""
    monkeypatch.setenv(variable, value)
    assert _error("secrets: {}\n").startswith(f"{field}: ")


@pytest.mark.parametrize("name", ["a\tb", "a\nb", "tls/\x1b[31mred", "del\x7f", "\x00", "a\rb", "c1\x9b2J",
                                  "bidi\u202egpj.exe", "line\u2028break"])
def test_target_control_characters(name: str) -> None:
    """A target with a control character is refused; the message escapes it and stays one line."""
    message = _error(PROVIDER + f"secrets:\n  {json.dumps(name)}: {{provider: dev, ref: a}}\n")
    assert "must not contain control characters" in message
    assert all(c.isprintable() for c in message)


@pytest.mark.parametrize("name", [
    "x" * (MAX_COMPONENT + 1), "tls/" + "x" * (MAX_COMPONENT + 1), "é" * (MAX_COMPONENT // 2 + 1),
])
def test_target_component_too_long(name: str) -> None:
    """A component that, with the writer's temporary prefix, would pass NAME_MAX is refused."""
    assert f"longer than {MAX_COMPONENT} bytes" in _error(PROVIDER + f"secrets:\n  {name}: {{provider: dev, ref: a}}\n")


def test_target_component_at_the_limit() -> None:
    """A component of exactly MAX_COMPONENT bytes is accepted, and leaves room for a 16-byte prefix."""
    name = "x" * MAX_COMPONENT
    assert name in parse_config(PROVIDER + f"secrets:\n  {name}: {{provider: dev, ref: a}}\n").settings.secrets
    assert len(f"..link_{name}".encode()) <= 255 and MAX_COMPONENT + 16 == 255


@pytest.mark.parametrize("name", [
    ".secrets-bridge-state.json", ".secrets-bridge-leases.json", ".secrets-bridge-leases.json/a",
    ".secrets-bridge-anything",
])
def test_target_clashing_with_bridge_files(name: str) -> None:
    """Names of the bridge's own files (state, leases, and the prefix kept for later ones) are refused."""
    message = _error(PROVIDER + f"secrets:\n  {name}: {{provider: dev, ref: a}}\n")
    assert "reserved for the bridge's own files" in message


def test_bridge_file_names_allowed_in_a_folder() -> None:
    """Only the top level is reserved: tls/.secrets-bridge-state.json clashes with nothing."""
    config = parse_config(PROVIDER + "secrets:\n  tls/.secrets-bridge-state.json: {provider: dev, ref: a}\n")
    assert list(config.settings.secrets) == ["tls/.secrets-bridge-state.json"]


def test_deep_and_long_targets() -> None:
    """Targets nesting past MAX_TARGET_DEPTH folders, or passing PATH_MAX with output_dir, are refused."""
    deep = "/".join(["d"] * (MAX_TARGET_DEPTH + 1))
    assert "nests more than" in _error(PROVIDER + f"secrets:\n  {deep}: {{provider: dev, ref: a}}\n")
    long = "/".join(["x" * MAX_COMPONENT] * 17)  # 17 * 240 bytes
    assert "PATH_MAX" in _error(PROVIDER + f"secrets:\n  ? {long}\n  : {{provider: dev, ref: a}}\n")
    many = "\n".join(f"  {'/'.join(['d'] * (MAX_TARGET_DEPTH - 1))}/f{i}: {{provider: dev, ref: a}}" for i in range(50))
    assert len(parse_config(PROVIDER + "secrets:\n" + many + "\n").settings.secrets) == 50


@pytest.mark.parametrize(("text", "message"), [
    ('output_dir: "/run/a\\0b"\n', "output_dir: a path cannot contain a NUL byte"),
    ("output_dir: ''\n", "output_dir: expected a path, got an empty string"),
    ('audit_log: "/var/log/a\\0b"\n', "audit_log: a path cannot contain a NUL byte"),
    ("log_format: xml\n", "log_format: Input should be 'auto', 'text' or 'json'"),
])
def test_paths_and_log_fields(text: str, message: str) -> None:
    """Paths the OS cannot take and unknown log formats are refused at load."""
    assert _error(text + "secrets: {}\n") == message


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


def test_alias_bomb_refused() -> None:
    """YAML aliases that expand exponentially (billion laughs) are refused in one line."""
    levels = ["_0: &l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"_{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    text = "providers:\n  dev: {type: file, base_dir: /tmp, anchors: {" + ", ".join(levels) + "}}\nsecrets: {}\n"
    assert "YAML aliases expand the document past 16 MiB" in _error(text)
    shared = "providers:\n  a: &p {type: file, base_dir: /tmp}\n  b: *p\nsecrets: {}\n"
    assert set(parse_config(shared).settings.providers) == {"a", "b"}


def test_alias_guard_is_linear() -> None:
    """A list of 5,000 scalars repeated 9,999 times (50 M nodes expanded; the old guard walked each
    repeat again, for tens of seconds) is refused in well under a second."""
    items = ", ".join(["x"] * 5000)
    text = ("providers:\n  dev: {type: file, base_dir: /tmp, a: &a [" + items + "], b: ["
            + ", ".join(["*a"] * 9999) + "]}\nsecrets: {}\n")
    started = time.monotonic()
    assert "YAML aliases expand the document past" in _error(text)
    assert time.monotonic() - started < 1.5


def test_scalar_alias_bomb_refused() -> None:
    """One 1 MB text repeated through aliases by 5,000 entries is refused before validation (it
    raised MemoryError there, and a running bridge exited on its reload)."""
    secrets = "".join(f"  s{i}: {{provider: dev, ref: *t}}\n" for i in range(5000))
    text = f"providers:\n  dev: {{type: file, base_dir: /tmp, x: &t {'x' * 1_000_000}}}\nsecrets:\n{secrets}"
    assert "YAML aliases expand the document past 16 MiB" in _error(text)


def test_alias_inside_itself_refused() -> None:
    """A YAML node that contains an alias to itself is refused in one line, not walked for ever."""
    assert "refers to a node that contains it" in _error("providers:\n  dev: &a {type: file, x: [*a]}\nsecrets: {}\n")


@pytest.mark.parametrize("error", [OSError(2, "No such file"), TypeError("bad"), KeyError("k"), OverflowError("big")])
def test_provider_validator_failing_oddly_is_a_config_error(error: Exception) -> None:
    """A provider model that fails with OSError, TypeError, KeyError or OverflowError gives one ConfigError
    naming the section (so a reload rejects it instead of ending the bridge)."""
    def build() -> None:
        raise error

    with pytest.raises(ConfigError, match=rf"^providers\.v: invalid \({type(error).__name__}\)$"):
        _validate(build, ("providers", "v"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/-/reload", "https://vault:8200", "http://[::1]:80/x?y=1",
                                 "https://prod-kv.vault.azure.net"])
def test_http_urls_accepted(url: str) -> None:
    """http(s) URLs with a host (and a valid port) pass parse_http_url, for on_change and provider endpoints."""
    assert parse_http_url(url) == url


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://x/y", "http:// or https://"), ("javascript:alert(1)", "http:// or https://"), ("http://", "no host"),
    ("http://a b/", "spaces"), ("http://x/\n", "control"), ("http://x:99999/", "not a valid URL"),
    ("http://x:port/", "not a valid URL"), ("http://user:hunter2@x/", "credentials"), ("http://x:0/", "port 0"),
    ("http://[::1/", "not a valid URL"), ("127.0.0.1:8080", "http:// or https://"),
])
def test_bad_http_urls(url: str, message: str) -> None:
    """A URL the bridge could not call, or one carrying credentials, is refused with a reason and not echoed."""
    with pytest.raises(ValueError, match=message) as info:
        parse_http_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("section", "field"), [
    ("on_change:\n  - {http: {url: URL}}\n", "on_change.0.http.url"),
    ("providers:\n  v: {type: vault, address: URL}\n", "providers.v.address"),
    ("providers:\n  a: {type: aws-secretsmanager, region: eu-west-1, endpoint_url: URL}\n", "providers.a.endpoint_url"),
    ("providers:\n  z: {type: azure-keyvault, vault_url: URL}\n", "providers.z.vault_url"),
    ("providers:\n  z: {type: azure-keyvault, vault_url: 'https://kv.vault.azure.net', authority_host: URL}\n",
     "providers.z.authority_host"),
])
@pytest.mark.parametrize(("url", "message"), [("'https://user:hunter2@host:8200'", "credentials"),
                                              ("'https://host:0'", "port 0")])
def test_every_url_field_has_the_strict_check(section: str, field: str, url: str, message: str) -> None:
    """One URL check for every URL field: credentials in the URL (a failing call would log them)
    and port 0 are refused in one line naming the field, the password never echoed."""
    error = _error(section.replace("URL", url) + ("secrets: {}\n" if "secrets" not in section else ""))
    assert error.startswith(f"{field}: ") and message in error and "hunter2" not in error, error


def test_duplicate_long_key_message_stays_short() -> None:
    """A YAML error quoting a very long key stays one short line."""
    key = "k" * 5000
    message = _error(f"secrets:\n  ? {key}\n  : {{}}\n  ? {key}\n  : {{}}\n")
    assert "duplicate key" in message and len(message) < 300


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


@pytest.mark.parametrize("template", ["{{ s | nosuchfilter }}", "{{ s is nosuchtest }}"])
def test_a_template_naming_an_unknown_filter_or_test_is_one_config_line(template: str) -> None:
    """An unknown filter or test is found when the template compiles: a ConfigError naming the field
    (it was `internal error (TemplateAssertionError)`)."""
    text = (f"providers: {{dev: {{type: env}}}}\nsecrets:\n  t: {{template: \"{template}\", "
            "values: {s: {provider: dev, ref: X}}}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith("secrets.t.template: template does not compile")
