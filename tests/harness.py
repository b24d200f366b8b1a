"""The one subprocess harness: `secrets-bridge` run as a user runs it, its console script in a
process of its own, one-shot commands (`sync`, `ls`, `inspect`, `check` ...) and long-running ones
(`run`, `exec`) alike, and EVERYTHING it printed kept in one log file, so a test can scan it for
leaked secrets. It never mocks anything inside the bridge and never hides a failure: a process that
outlives its stop timeout is killed and the test fails."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGTERM
from typing import Any

import pytest

from tests.servers import venv_binary

ROOT = Path(__file__).resolve().parent.parent

#: libfaketime, for a bridge whose wall clock is off (`Bridge(clock="+2h")`)
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
#: the `sitecustomize` that gives a bridge under libfaketime a `time.sleep` that works (see its docstring)
FAKETIME_SITE = Path(__file__).parent / "faketime_site"

def skip_unless_others_reach_the_checkout(uid: int) -> None:
    """Skip a test that runs the bridge as `uid` when that uid cannot reach this checkout (a folder
    on its way not searchable by others, as `mktemp -d` makes it): after switching uid the bridge
    still imports parts of itself, and reads its config, from there."""
    blocked = next((p for p in (ROOT, *ROOT.parents) if not os.stat(p).st_mode & 0o001), None)
    if blocked is not None:
        pytest.skip(f"uid {uid} cannot reach the checkout: {blocked} is not searchable by others")


#: The bridge as another uid:gid (`Bridge.start(..., as_uid=N)`). The switch happens inside Python after every
#: module the run needs is loaded, as the interpreter may live where only root can read.
_AS_USER = """
import os, sys
import bridge.cli, bridge.runtime.runner, bridge.runtime.server, bridge.engine.cycle, providers.local
import json, http.server, logging.handlers, prometheus_client, pydantic_settings, encodings, importlib, pkgutil
for codec in pkgutil.iter_modules(encodings.__path__):  # codecs are looked up on first use
    try:
        importlib.import_module("encodings." + codec.name)
    except ImportError:
        pass
os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]))
sys.exit(bridge.cli.main(sys.argv[2:]))
"""


class Bridge:
    """`secrets-bridge [options] --config CONFIG ...` as processes sharing one environment and one log.

    `env` overrides the base environment: the test's own less any SECRETS_BRIDGE_* variable (or,
    with `inherit=False`, only PATH), with PYTHONPATH the project's unless `env` names one.
    `options` go before every command (`--debug`, `--log-format json`); `clock` runs it with its
    wall clock that far off (libfaketime, monotonic kept); `log` is where its output goes (default:
    beside the config)."""

    def __init__(self, config: Path, *, env: Mapping[str, str] | None = None, options: Sequence[str] = (),
                 inherit: bool = True, clock: str | None = None, log: Path | None = None) -> None:
        self.config = config
        mine = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}  # the config says
        base = mine if inherit else {"PATH": "/usr/bin:/bin"}
        self.env: dict[str, str] = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
        if clock is not None:
            if not os.path.exists(FAKETIME):
                pytest.skip("libfaketime is not installed (apt-get install faketime)")
            self.env.update(LD_PRELOAD=FAKETIME, FAKETIME=clock, FAKETIME_DONT_FAKE_MONOTONIC="1",
                            FAKETIME_NO_CACHE="1", PYTHONPATH=f"{FAKETIME_SITE}{os.pathsep}{ROOT}")
        self.options = list(options)
        self.log = log or config.with_name(f"{config.stem}-{uuid.uuid4().hex[:6]}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> list[str]:
        """The argv of one command: the console script, the options, the config, then `args`."""
        return [venv_binary("secrets-bridge"), *self.options, "--config", str(self.config), *args]

    def __call__(self, *args: str, check: int | None = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A one-shot command to its end; its stdout and stderr are kept. `check`: the exit status it
        must have (None: any)."""
        done = subprocess.run(self.command(*args), env=self.env, capture_output=True, timeout=timeout)
        self.keep(done.stdout + done.stderr)
        text = subprocess.CompletedProcess(done.args, done.returncode, _text(done.stdout), _text(done.stderr))
        if check is not None:
            assert text.returncode == check, f"exit {text.returncode}, not {check}: {text.stderr[-3000:]}"
        return text

    def start(self, *args: str, as_uid: int | None = None, **popen: Any) -> subprocess.Popen[bytes]:
        """A long-running command (default `run`) in the background, its output into the log.
        `as_uid`: as that uid and gid (the tests run as root); `popen`: more Popen arguments (stdin,
        preexec_fn ...; a `stdout` given here is the caller's, not kept)."""
        command = self.command(*(args or ("run",)))
        if as_uid is not None:
            skip_unless_others_reach_the_checkout(as_uid)
            command = [sys.executable, "-c", _AS_USER, str(as_uid), *command[1:]]
        with open(self.log, "ab") as log:
            popen.setdefault("stdout", log)
            self.proc = subprocess.Popen(command, env=self.env, stderr=log, **popen)
        return self.proc

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30, sig: int = SIGTERM) -> int:
        """`sig` (SIGTERM) unless it has ended; its exit status. Still running `timeout` seconds
        later: killed, and the test fails."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout, f"still running {timeout}s after signal {sig}")

    def wait(self, timeout: float = 30, why: str = "") -> int:
        """Its exit status once it ends by itself; not ended in `timeout` seconds: killed, test fails."""
        assert self.proc is not None, "not started"
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{why or f'did not end within {timeout}s'}:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL if it is still running (for `finally:`; never fails)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def keep(self, data: str | bytes) -> None:
        """Add text the test got from the bridge another way (a /metrics page) to what is scanned."""
        with open(self.log, "ab") as log:
            log.write(data.encode() if isinstance(data, str) else data)
            log.write(b"\n")

    def output(self) -> str:
        """Everything printed so far, by every command this harness ran."""
        return _text(self.raw())

    def raw(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            return self.log.read_bytes()
        return b""


def vault_env(openbao: Any) -> dict[str, str]:
    """The environment a bridge needs to reach the session's OpenBao as root."""
    return {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token}


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")
