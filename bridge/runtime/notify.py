"""Tell the application that files changed: a signal, a command, or an HTTP call.

The engine calls the Notifier with a commit's `Change` records; it only queues them and returns, so
an action never delays syncing. One worker thread runs the actions: each `on_change` entry whose
`secrets` name a changed entry or file fires once its `wait` window has passed (consul-template's
quiescence), with every change gathered since it last fired. A failing action is logged and counted,
never raised. A started command gets a minimal environment (never the bridge's own, which may hold a
vault token) and the changed files in SECRETS_BRIDGE_CHANGED, one per line; never values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge.config.loader import OnChange
from bridge.observe.changes import Change
from bridge.observe.metrics import NOTIFICATIONS

log = logging.getLogger("secrets_bridge.notify")

_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
#: a pid file is read up to this size: a pid is a few digits
_PID_FILE_MAX_BYTES = 64
_PID = re.compile(r"-?[0-9]+")


class _Skipped(Exception):
    """The action had nothing to act on yet (logged at info, counted as skipped)."""


class _Refused(Exception):
    """Acting would be dangerous (a pid file that would signal a group): logged as an error."""


@dataclass(eq=False)
class _Hook:
    """One `on_change` entry and the changes waiting for it."""

    index: int
    config: OnChange
    pending: dict[str, Change] = field(default_factory=dict)  # by file: the newest record wins
    first_at: float | None = None
    last_at: float | None = None
    #: every pending change came from the first sync of `run`
    at_start: bool = True
    #: dropped by a reload: announces what it has pending at once, then goes
    retiring: bool = False

    def wants(self, change: Change) -> bool:
        names = self.config.secrets
        if self.retiring:
            return False  # dropped by a reload: takes no new changes
        return names is None or change.entry in names or change.file in names

    def add(self, changes: list[Change], now: float, at_start: bool) -> None:
        if not self.pending:
            self.first_at, self.at_start = now, True
        self.pending.update((c.file, c) for c in changes)
        self.last_at = now
        self.at_start = self.at_start and at_start

    def due_at(self, flushing: bool) -> float | None:
        if not self.pending or self.first_at is None or self.last_at is None:
            return None
        wait = self.config.wait
        if wait is None or flushing or self.retiring:
            return self.first_at
        assert wait.max is not None  # filled by the model
        return min(self.last_at + wait.min, self.first_at + wait.max)

    def take(self) -> tuple[list[Change], bool]:
        changes, at_start = list(self.pending.values()), self.at_start
        self.pending.clear()
        self.first_at = self.last_at = None
        return changes, at_start


class Notifier:
    """Queues changes for the `on_change` actions and runs them on its own thread.

    `__call__(changes)` never blocks on an action. `started()` marks the end of `run`'s first
    sync. `close(timeout)` runs what is pending at once and gives it at most `timeout` seconds."""

    def __init__(self, hooks: Sequence[OnChange]) -> None:
        self._cond = threading.Condition()
        self._hooks = [_Hook(i, hook) for i, hook in enumerate(hooks)]
        self._starting = True
        self._closing = False
        self._abandoned = False
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._cond:
            if self._closing:
                return
            now = time.monotonic()
            for hook in self._hooks:
                wanted = [c for c in changes if hook.wants(c)]
                if wanted:
                    hook.add(wanted, now, self._starting)
            if self._thread is None and any(h.pending for h in self._hooks):
                self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
                self._thread.start()
            self._cond.notify()

    def started(self) -> None:
        """The first sync of `run` is over: from now on a missing pid file is an error."""
        with self._cond:
            self._starting = False

    def replace(self, hooks: Sequence[OnChange]) -> None:
        """Take a reloaded config's actions. An action that stays keeps its pending changes; the
        pending changes of one that goes are announced now."""
        with self._cond:
            kept: list[_Hook] = []
            for i, config in enumerate(hooks):
                old = next((h for h in self._hooks if h.config == config and h not in kept), None)
                if old is not None:
                    old.index = i
                kept.append(old or _Hook(i, config))
            for gone in (h for h in self._hooks if h not in kept and h.pending):
                gone.retiring = True
                kept.append(gone)
            self._hooks = kept
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Run every pending action now; return within about `timeout` seconds, ending a command
        still running then (its hook is counted as failed)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                self._abandoned = True  # start no command after this
                child = self._child
            if child is not None:
                _kill(child)
            thread.join(1.0)
            log.warning("on_change: gave up waiting for actions at shutdown after %.0fs", timeout)

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
                while due is None:
                    if self._closing and not any(h.pending for h in self._hooks):
                        return
                    waits = [at for h in self._hooks if (at := h.due_at(self._closing)) is not None]
                    self._cond.wait(None if not waits else max(0.0, min(waits) - time.monotonic()))
                    due = self._next_due()
                hook = due
                changes, at_start = hook.take()
                if hook.retiring:
                    self._hooks.remove(hook)
            self._fire(hook, changes, at_start)

    def _next_due(self) -> _Hook | None:
        now = time.monotonic()
        for hook in self._hooks:
            at = hook.due_at(self._closing)
            if at is not None and at <= now:
                return hook
        return None

    def _fire(self, hook: _Hook, changes: list[Change], at_start: bool) -> None:
        kind = hook.config.kind
        try:
            self._run(hook.config, changes, at_start)
        except _Skipped as exc:
            log.info("on_change.%d: %s; skipped", hook.index, exc)
            NOTIFICATIONS.labels(action=kind, outcome="skipped").inc()
        except _Refused as exc:
            log.error("on_change.%d: %s; refused", hook.index, exc)
            NOTIFICATIONS.labels(action=kind, outcome="failed").inc()
        except Exception as exc:  # an action must never take the bridge down
            log.warning("on_change.%d (%s) failed: %s", hook.index, _describe(hook.config), exc)
            NOTIFICATIONS.labels(action=kind, outcome="failed").inc()
        else:
            NOTIFICATIONS.labels(action=kind, outcome="ok").inc()

    def _run(self, hook: OnChange, changes: list[Change], at_start: bool) -> None:
        files = sorted({c.file for c in changes})
        if hook.signum is not None and hook.pid_file is not None:
            pid = _read_pid(hook, at_start)
            os.kill(pid, hook.signum)
            log.info("on_change: sent %s to pid %d (%d files changed)", hook.signum.name, pid, len(files))
        elif hook.exec is not None:
            env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
            # One name per line: a name may hold a comma, never a newline (a config error).
            env["SECRETS_BRIDGE_CHANGED"] = "\n".join(files)
            self._exec(hook.exec, env, hook.timeout)
            log.info("on_change: ran %s (%d files changed)", hook.exec[0], len(files))
        elif hook.http is not None:
            request = urllib.request.Request(hook.http.url, method=hook.http.method,  # noqa: S310 - http(s) only, checked in config
                                             data=b"" if hook.http.method != "GET" else None)
            with _OPENER.open(request, timeout=hook.timeout) as response:
                log.info("on_change: %s %s -> %d", hook.http.method, _safe_url(hook.http.url), response.status)

    def _exec(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        with self._cond:
            if self._abandoned:
                raise RuntimeError("not started: the bridge is stopping")
            # Its own session: a Ctrl-C meant for the bridge does not hit it, and a kill reaches
            # everything it started.
            child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            self._child = child
        try:
            status = child.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(child)
            raise RuntimeError(f"timed out after {timeout:g}s; stopped it") from None
        finally:
            self._child = None
        if status != 0:
            raise RuntimeError(f"exit status {status}" if status > 0 else f"killed by signal {-status}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it could lead the call off the URL the config checked."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _read_pid(hook: OnChange, at_start: bool) -> int:
    """The pid in `pid_file`, refusing any value `kill(2)` would turn against other processes."""
    assert hook.pid_file is not None
    try:
        # Non-blocking, and regular files only: a FIFO planted as the pid file would hang the read.
        fd = os.open(hook.pid_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Refused(f"pid file {hook.pid_file} is not a regular file")
            text = os.read(fd, _PID_FILE_MAX_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        if at_start:
            raise _Skipped(f"pid file {hook.pid_file} does not exist yet (the application is starting)") from None
        raise RuntimeError(f"pid file {hook.pid_file} does not exist") from None
    except OSError as exc:
        raise RuntimeError(f"cannot read pid file {hook.pid_file}: {exc.strerror}") from None
    try:
        digits = text.decode("ascii").strip()
        if len(text) > _PID_FILE_MAX_BYTES or not _PID.fullmatch(digits):
            raise ValueError
        pid = int(digits)
    except ValueError:
        raise _Refused(f"pid file {hook.pid_file} does not hold a process id") from None
    if pid <= 0:
        # kill(0) signals our own process group, kill(-1) every process we may signal.
        raise _Refused(f"pid file {hook.pid_file} holds {pid}, which would signal a group of processes")
    if pid == os.getpid():
        raise _Refused(f"pid file {hook.pid_file} holds the bridge's own pid")
    return pid


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(1.0)


def _safe_url(url: str) -> str:
    """scheme://host:port/path, without a password or a query that may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _describe(hook: OnChange) -> str:
    if hook.signal is not None:
        return f"signal {hook.signal}"
    if hook.exec is not None:
        return f"exec {hook.exec[0]}"
    return f"http {_safe_url(hook.http.url) if hook.http else ''}"
