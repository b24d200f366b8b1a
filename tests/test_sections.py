"""The sections of a configuration (bridge/config/sections.py): the `on_change` actions with their
wait and timeout bounds, signal names, and the `exec:` settings."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bridge.config.loader import parse_config
from bridge.config.sections import OnChange
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

