"""The one subprocess harness (tests/harness.py) keeps what the tests rely on: every command's
stdout and stderr in one log, and a stop that kills a bridge outliving its timeout and fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Bridge
from tests.polling import wait_for


def _config(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("value-in-a-file")
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nrequire_tmpfs: false\nlisten: null\n"
                      f"providers:\n  dev: {{type: file, base_dir: {tmp_path / 'src'}}}\n"
                      "secrets:\n  a: {provider: dev, ref: a}\n")
    return config


def test_one_log_holds_what_every_command_printed(tmp_path: Path) -> None:
    """A one-shot command's stdout and stderr, a started command's output and kept text all land in
    output(); a one-shot exiting with another status than `check` fails the test."""
    bridge = Bridge(_config(tmp_path))
    bridge("sync")
    listed = bridge("ls")
    assert "a" in listed.stdout.split()
    bridge.start("exec", "--", "/bin/sh", "-c", "echo child-said-this; echo child-err >&2")
    assert bridge.wait(30) == 0
    bridge.keep("a /metrics page")
    text = bridge.output()
    assert "sync:" in text and listed.stdout in text
    assert "child-said-this" in text and "child-err" in text and "a /metrics page" in text
    with pytest.raises(AssertionError, match="exit 1, not 0"):
        bridge("inspect", "nope")


def test_stop_kills_a_bridge_that_outlives_its_timeout_and_fails(tmp_path: Path) -> None:
    """`exec` waits for a child ignoring SIGTERM: stop(timeout=1) kills the bridge and fails the test."""
    bridge = Bridge(_config(tmp_path))
    bridge.start("exec", "--", "/bin/sh", "-c", "trap '' TERM; echo ignoring $$; while :; do sleep 0.1; done")
    try:
        assert wait_for(lambda: "ignoring" in bridge.output(), 20), bridge.output()
        started = time.monotonic()
        with pytest.raises(AssertionError, match=f"still running 1s after signal {int(signal.SIGTERM)}"):
            bridge.stop(timeout=1)
        assert time.monotonic() - started < 10
        assert bridge.proc is not None and bridge.proc.poll() is not None  # killed, not left behind
    finally:
        bridge.kill()
        child = int(bridge.output().split("ignoring ")[1].split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)  # the bridge's SIGKILL leaves its child behind


def test_the_leak_scan_finds_each_value_whole_and_only_whole() -> None:
    """The reliability tests' scan (one Aho-Corasick pass per text) reports a value that occurs whole
    in any text, bytes of any kind included, and not one that occurs only cut short."""
    from tests.reliability_kit import Leaks

    leaks = Leaks()
    values = [f"value-{i:05d}-{'x' * 8}" for i in range(1000)]
    leaks.secret(*values, b"\xff\x00binary\xfe-value", "short")  # under 8 bytes: not a value
    leaks.text("log", f"...{values[10][:-1]} and {values[20]}!".encode())
    leaks.text("state", b"{\xff\x00binary\xfe-value}short")
    leaks.text("clean", values[30][:-1].encode())
    assert leaks.finder()(leaks.texts["log"]) == {values[20].encode()}
    with pytest.raises(AssertionError, match="secret values in output") as info:
        leaks.check("harness_selftest")
    assert "('log'" in str(info.value) and "('state'" in str(info.value) and "clean" not in str(info.value)


def test_a_bridge_under_a_skewed_clock_can_sleep(tmp_path: Path) -> None:
    """Under the harness's libfaketime (wall clock off, monotonic kept) `time.sleep` works, as on a
    host whose clock is off (bare libfaketime fails it with EINVAL: tests/faketime_site), and the
    wall clock is still the skewed one."""
    config = tmp_path / "c.yaml"
    config.write_text("secrets: {}\n")
    env = Bridge(config, clock="-1h").env  # skips where libfaketime is not installed
    probe = "import time; a = time.monotonic(); time.sleep(0.05); print(time.monotonic() - a, time.time())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    slept, wall = map(float, done.stdout.split())
    assert 0.04 < slept < 5 and wall < time.time() - 3000
