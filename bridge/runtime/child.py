"""The child of `exec`: its environment, its start, its signals, its stop, its exit status, and the
orphans a PID 1 must reap.

The child gets the bridge's own environment less every credential the bridge reads and every
SECRETS_BRIDGE_* variable, plus the `env:` values (which win). It runs in a process group of its
own (as under tini) and, when the bridge holds the terminal, in the foreground of it, so the
terminal's ^C and ^Z reach the child alone. Signal handlers here only call `os.kill`; they never
take a lock or log. This module never logs a value, and never puts one in an exception.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

from bridge.errors import BridgeError

#: signals passed on to the child (SIGTERM also when the bridge is asked to stop: the child decides)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)

_OWN_PREFIX = b"SECRETS_BRIDGE_"


class StartError(BridgeError):
    """The child could not be started (not found, not executable): 127 or 126, as a shell says."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def child_environment(base: Mapping[bytes, bytes], values: Mapping[str, bytes],
                      credentials: Iterable[str]) -> dict[bytes, bytes]:
    """The bridge's environment less `credentials` (what the configured providers read, their
    `credential_env`) and SECRETS_BRIDGE_*, plus `values` (which win)."""
    hidden = {name.upper().encode() for name in credentials}
    env = {k: v for k, v in base.items() if k.upper() not in hidden and not k.upper().startswith(_OWN_PREFIX)}
    env.update((name.encode(), value) for name, value in values.items())
    return env


def exit_status(returncode: int) -> int:
    """A process's status as a shell reports it: its exit code, or 128+N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal() -> int | None:
    """The terminal on stdin, when the bridge is in its foreground (else there is none to hand on)."""
    try:
        return 0 if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp() else None
    except OSError:
        return None


def _take_terminal(fd: int, pgrp: int) -> None:
    """Make `pgrp` the terminal's foreground group; SIGTTOU blocked, as a shell does, since the
    bridge may be in the background of it by now."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgrp)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _foreground(fd: int) -> None:
    """In the child, before exec: its own process group, in the terminal's foreground."""
    os.setpgid(0, 0)
    _take_terminal(fd, os.getpgrp())


class Child:
    """The application process: started, restarted and stopped by the supervisor in exec_runner."""

    def __init__(self, argv: Sequence[str], *, stdout: int | None = None, stderr: int | None = None) -> None:
        self.argv = list(argv)
        self.stdout, self.stderr = stdout, stderr
        self.process: subprocess.Popen[bytes] | None = None
        self._terminal = _terminal()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def start(self, env: Mapping[bytes, bytes]) -> None:
        # Under a terminal the child takes its foreground itself, before exec: done from here after
        # the start, a program that looks at the terminal at once (a shell) would find it not yet
        # its own. Only then a preexec_fn (which a threaded parent should avoid): it makes two
        # system calls and takes no lock.
        terminal = self._terminal
        foreground = None if terminal is None else functools.partial(_foreground, terminal)
        try:
            # close_fds; restore_signals puts SIGPIPE back; handlers are reset by exec itself
            self.process = subprocess.Popen(self.argv, env=env, stdout=self.stdout, stderr=self.stderr,
                                            process_group=0, preexec_fn=foreground)
        except FileNotFoundError:
            raise StartError(f"cannot run {self.argv[0]!r}: command not found", 127) from None
        except PermissionError:
            raise StartError(f"cannot run {self.argv[0]!r}: permission denied", 126) from None
        except OSError as exc:
            raise StartError(f"cannot run {self.argv[0]!r}: {exc.strerror}", 126) from None

    def forward(self, signum: int) -> bool:
        """Pass a signal on (safe in a signal handler); False when there is no child to take it."""
        process = self.process
        if process is None or process.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet: the status follows
            os.kill(process.pid, signum)
        return True

    def poll(self) -> int | None:
        """The child's exit status (128+N for signal N) once it has exited, reaping it; else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and self._terminal is not None:
            _take_terminal(self._terminal, os.getpgrp())
        return None if code is None else exit_status(code)

    def stop(self, signum: int, timeout: float) -> int | None:
        """Ask the child to stop with `signum`; SIGKILL it after `timeout` seconds. Its status."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.forward(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.poll()


def reap_orphans(child: Child, keep: Callable[[], frozenset[int]] = frozenset) -> int:
    """As PID 1 (tini's job): reap every exited process reparented to us, never the child (whose
    status its Popen reads) nor a pid `keep()` names (an on_change command its thread waits for),
    asked again for each pid, so a command started since is not taken from its thread.
    Returns how many were reaped."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None:
            return reaped
        if info.si_pid == child.pid:
            child.poll()
            if child.running():  # not reaped after all (another thread has it): come back later
                return reaped
            continue
        if info.si_pid in keep():
            return reaped  # its own thread reaps it; the others wait for the next wake
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1


class Quiet:
    """consul-template's quiescence for restarts: due `min` after the last change, at most `max`
    after the first of a burst."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.due: float | None = None

    def add(self, now: float, wait_min: float, wait_max: float) -> float:
        if self.first is None:
            self.first = now
        self.due = min(now + wait_min, self.first + max(wait_min, wait_max))
        return self.due

    def ready(self, now: float) -> bool:
        return self.due is not None and now >= self.due

    def clear(self) -> None:
        self.first = self.due = None

