"""The sections of a configuration (bridge/config/sections.py): the shapes of secret and `env:`
entries, the `on_change` actions with their wait and timeout bounds, signal names, and the
`exec:` settings."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bridge.config.loader import parse_config
from bridge.config.sections import EnvConfig, OnChange, SecretConfig
from bridge.errors import ConfigError


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


def test_wait_and_timeout_bounds() -> None:
    """wait.max defaults to 4 x min; a max below min, and a timeout of 0 or inf, are config errors."""
    assert OnChange.model_validate({"exec": ["x"], "wait": {"min": "2s"}}).wait.max == 8.0  # type: ignore[union-attr]
    for bad in ({"wait": {"min": "5s", "max": "1s"}}, {"timeout": 0}, {"timeout": "inf"}):
        with pytest.raises(ValueError):
            OnChange.model_validate({"exec": ["x"], **bad})


def test_signal_name_forms() -> None:
    """SIGHUP, HUP and hup are the same signal."""
    for name in ("SIGHUP", "HUP", "hup"):
        assert OnChange(signal=name, pid_file=Path("/x")).signum == signal.SIGHUP


def test_on_change_entries_are_bounded() -> None:
    """At most 100 `on_change` entries (each may hold a thread while it works): 101 is one line naming on_change."""
    hooks = "".join(f"  - {{exec: [/bin/true, '{i}']}}\n" for i in range(101))
    with pytest.raises(ConfigError, match=r"^on_change: "):
        parse_config("secrets: {}\non_change:\n" + hooks)
    parse_config("secrets: {}\non_change:\n" + "".join(hooks.splitlines(keepends=True)[:100]))

def test_exec_section() -> None:
    """exec: has defaults, takes a signal by either name, and refuses an unknown one."""
    config = parse_config("secrets: {}\nexec: {stop_signal: int, stop_timeout: 2s, wait: {min: 1s}}\n")
    assert config.settings.exec.stop_signum.name == "SIGINT"
    assert config.settings.exec.wait.max == 4.0 and config.settings.exec.restart_on == "env"
    with pytest.raises(ConfigError, match="exec: unknown signal 'SIGNOPE'"):
        parse_config("secrets: {}\nexec: {stop_signal: SIGNOPE}\n")
    with pytest.raises(ConfigError, match="exec.restart_on"):
        parse_config("secrets: {}\nexec: {restart_on: sometimes}\n")



@pytest.mark.parametrize(("entry", "message"), [
    ({"provider": "p", "ref": "r", "files": {}}, "files: names no file"),
    ({"provider": "p", "ref": "r", "key": "k", "files": {"a": "a"}}, "key goes on each file of files:"),
    ({"provider": "p", "ref": "r", "values": {"a": {"provider": "p", "ref": "r"}}},
     "values: belongs to a template entry"),
    ({"template": "{{ a }}"}, "template needs values:"),
    ({"template": "{{ a }}", "format": "pem", "values": {"a": {"provider": "p", "ref": "r"}}},
     "a template entry takes its sources from values:, not format"),
])
def test_secret_entry_shapes(entry: dict[str, object], message: str) -> None:
    """An entry is plain, `files:` or `template:`; a mix of their fields is refused saying which."""
    with pytest.raises(ValueError, match=message):
        SecretConfig(**entry)


def test_files_take_the_entry_defaults() -> None:
    """Each file of a `files:` entry takes the entry's encoding and format unless it sets its own."""
    entry = SecretConfig(**{"provider": "p", "ref": "r", "encoding": "base64", "format": "pem",
                            "files": {"a": "ka", "b": {"key": "kb", "encoding": None, "mode": "0400"}}})
    rules = entry.file_rules()
    assert (rules["a"].key, rules["a"].encoding, rules["a"].format) == ("ka", "base64", "pem")
    assert (rules["b"].key, rules["b"].encoding, rules["b"].mode) == ("kb", "base64", 0o400)
    assert set(entry.sources()) == {""} and entry.sources()[""].ref == "r"


def test_env_entry_needs_a_source() -> None:
    """An `env:` variable is one value (provider and ref) or a template; a template's sources are its values."""
    with pytest.raises(ValueError, match="give provider and ref"):
        EnvConfig(**{"provider": "p"})
    templated = EnvConfig(**{"template": "{{ a }}{{ b }}", "values": {
        "a": {"provider": "p", "ref": "r1"}, "b": {"provider": "q", "ref": "r2", "version": "3"}}})
    assert {name: (s.provider, s.ref, s.version) for name, s in templated.sources().items()} == {
        "a": ("p", "r1", None), "b": ("q", "r2", "3")}


@pytest.mark.parametrize(("hook", "message"), [
    ({"signal": "SIGHUP"}, "signal needs pid_file"),
    ({"exec": [""]}, "exec needs a command"),
    ({"exec": ["/bin/echo", "a\0b"]}, "no argument may contain a NUL byte"),
    ({"exec": ["/bin/true"], "http": {"url": "http://127.0.0.1/x"}}, "give exactly one of"),
])
def test_on_change_action_shapes(hook: dict[str, object], message: str) -> None:
    """An action is one signal (with its pid_file), one command (no NUL byte) or one request."""
    with pytest.raises(ValueError, match=message):
        OnChange.model_validate(hook)
    assert OnChange.model_validate({"http": {"url": "http://127.0.0.1/x"}}).kind == "http"
