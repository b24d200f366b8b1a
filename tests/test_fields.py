"""The value types of the configuration (bridge/config/fields.py): durations, modes, owner ids,
listen addresses, paths, target names and http(s) URLs, each refused at load in one line naming
its field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config.fields import (
    MAX_COMPONENT,
    MAX_DURATION_SECONDS,
    MAX_TARGET_DEPTH,
    parse_duration,
    parse_http_url,
    parse_listen,
    parse_mode,
)
from bridge.config.loader import parse_config
from bridge.errors import ConfigError
from tests.config_fixtures import BASE, PROVIDER, config_error


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
    assert config_error(PROVIDER + text).startswith(f"{field}: ")


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
    assert config_error(f"listen: {listen!r}\nsecrets: {{}}\n").startswith("listen: ")


@pytest.mark.parametrize(("listen", "parsed"), [
    ("0.0.0.0:9098", ("0.0.0.0", 9098)), ("[::1]:9098", ("::1", 9098)), (":9098", ("0.0.0.0", 9098)),
    ("localhost:65535", ("localhost", 65535)), ("metrics.internal.example:0", ("metrics.internal.example", 0)),
    ("[fe80::1%eth0]:9098", ("fe80::1%eth0", 9098)), ("127.0.0.1:9098", ("127.0.0.1", 9098)),
])
def test_listen_forms(listen: str, parsed: tuple[str, int]) -> None:
    """IPv4, bracketed IPv6, DNS names and a bare :PORT are understood."""
    assert parse_config(f"listen: {listen!r}\nsecrets: {{}}\n").settings.listen == listen
    assert parse_listen(listen) == parsed


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
    assert config_error(PROVIDER + template.format(value)).startswith(f"{field}: ")


def test_ten_years_is_the_longest_duration() -> None:
    """3650 days is accepted: the bound refuses only overflow and typos."""
    assert parse_duration("3650d") == MAX_DURATION_SECONDS


@pytest.mark.parametrize("name", ["a\tb", "a\nb", "tls/\x1b[31mred", "del\x7f", "\x00", "a\rb", "c1\x9b2J",
                                  "bidi\u202egpj.exe", "line\u2028break"])
def test_target_control_characters(name: str) -> None:
    """A target with a control character is refused; the message escapes it and stays one line."""
    message = config_error(PROVIDER + f"secrets:\n  {json.dumps(name)}: {{provider: dev, ref: a}}\n")
    assert "must not contain control characters" in message
    assert all(c.isprintable() for c in message)


@pytest.mark.parametrize("name", [
    "x" * (MAX_COMPONENT + 1), "tls/" + "x" * (MAX_COMPONENT + 1), "é" * (MAX_COMPONENT // 2 + 1),
])
def test_target_component_too_long(name: str) -> None:
    """A component that, with the writer's temporary prefix, would pass NAME_MAX is refused."""
    text = PROVIDER + f"secrets:\n  {name}: {{provider: dev, ref: a}}\n"
    assert f"longer than {MAX_COMPONENT} bytes" in config_error(text)


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
    message = config_error(PROVIDER + f"secrets:\n  {name}: {{provider: dev, ref: a}}\n")
    assert "reserved for the bridge's own files" in message


def test_bridge_file_names_allowed_in_a_folder() -> None:
    """Only the top level is reserved: tls/.secrets-bridge-state.json clashes with nothing."""
    config = parse_config(PROVIDER + "secrets:\n  tls/.secrets-bridge-state.json: {provider: dev, ref: a}\n")
    assert list(config.settings.secrets) == ["tls/.secrets-bridge-state.json"]


def test_deep_and_long_targets() -> None:
    """Targets nesting past MAX_TARGET_DEPTH folders, or passing PATH_MAX with output_dir, are refused."""
    deep = "/".join(["d"] * (MAX_TARGET_DEPTH + 1))
    assert "nests more than" in config_error(PROVIDER + f"secrets:\n  {deep}: {{provider: dev, ref: a}}\n")
    long = "/".join(["x" * MAX_COMPONENT] * 17)  # 17 * 240 bytes
    assert "PATH_MAX" in config_error(PROVIDER + f"secrets:\n  ? {long}\n  : {{provider: dev, ref: a}}\n")
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
    assert config_error(text + "secrets: {}\n") == message


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
    error = config_error(section.replace("URL", url) + ("secrets: {}\n" if "secrets" not in section else ""))
    assert error.startswith(f"{field}: ") and message in error and "hunter2" not in error, error

@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "127.0.0.1:8080/reload",
                                 "http:///no-host", "http://127.0.0.1:99999/", "http://a b/"])
def test_http_url_is_checked_at_config_time(url: str) -> None:
    """Only http and https URLs with a host and a valid port pass the config, naming the field."""
    text = f"output_dir: /tmp/x\non_change:\n  - {{http: {{url: {url!r}}}}}\n"
    with pytest.raises(ConfigError, match=r"^on_change\.0\.http\.url: ") as caught:
        parse_config(text)
    assert "passwd" not in str(caught.value) and "\n" not in str(caught.value)


@given(st.one_of(st.text(alphabet="ab_.-/ \x00\u202e9", max_size=12),
                 st.text(alphabet="a", min_size=230, max_size=250)))
def test_the_plain_name_shortcut_accepts_nothing_the_checks_refuse(name: str) -> None:
    """check_target's shortcut for the usual name (`db_password`) lets through only names the full
    text and part checks accept too."""
    from bridge.config.fields import _PLAIN, _parts_problem, _text_problem
    if _PLAIN.fullmatch(name):
        assert _text_problem(name) is None and _parts_problem(name.split("/")) is None
