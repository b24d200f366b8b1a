"""Tell the application that files changed: a signal, a command, or an HTTP call.

The engine calls the Notifier with a commit's `Change` records; it only queues them and returns, so
an action never delays syncing. Each `on_change` entry has its own worker thread, started when it has
something pending and ended when it has nothing left (so threads are bounded by the entries, and one
slow action never delays another): it fires once its `wait` window has passed (consul-template's
quiescence), with every change gathered since it last fired. `timeout` is a deadline for the whole
action (a command, or an HTTP call however slowly the server answers). A failing action is logged
and counted, never raised; its message never holds the URL's user, password or query. A started
command gets a minimal environment (never the bridge's own, which may hold a vault token) and the
changed files in SECRETS_BRIDGE_CHANGED, one per line; never values.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge.config.sections import HttpHook, OnChange
from bridge.observe.changes import Change
from bridge.observe.metrics import NOTIFICATIONS

log = logging.getLogger("secrets_bridge.notify")

_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
#: a pid file is read up to this size: a pid is a few digits
_PID_FILE_MAX_BYTES = 64
_PID = re.compile(r"-?[0-9]+")
#: of an HTTP action's answer only this much is read (the status is what counts)
_HTTP_BODY_MAX_BYTES = 64 * 1024


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
    #: the thread running this entry's actions, while it has any pending or running
    worker: threading.Thread | None = None

    def wants(self, change: Change) -> bool:
        names = self.config.secrets
        if self.retiring:
            return False  # dropped by a reload: takes no new changes
        if change.kind != "file":
            return False  # an env value reaches the child of `exec` by a restart, not a notification
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
    """Queues changes for the `on_change` actions and runs each entry's on a thread of its own.

    `__call__(changes)` never blocks on an action. `started()` marks the end of `run`'s first
    sync. `close(timeout)` runs what is pending at once and gives it at most `timeout` seconds."""

    def __init__(self, hooks: Sequence[OnChange]) -> None:
        self._cond = threading.Condition()
        self._hooks = [_Hook(i, hook) for i, hook in enumerate(hooks)]
        self._starting = True
        self._closing = False
        self._abandoned = False
        self._children: set[subprocess.Popen[bytes]] = set()
        #: every live worker, those of entries a reload dropped included
        self._workers: set[threading.Thread] = set()

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
                    self._start_worker(hook)
            self._cond.notify_all()

    def running_pids(self) -> frozenset[int]:
        """The on_change commands running now (their threads reap them; a PID 1 reaper must not)."""
        with self._cond:
            return frozenset(child.pid for child in self._children)

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
            self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Run every pending action now; return within about `timeout` seconds, ending a command
        still running then (its hook is counted as failed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in workers):
            with self._cond:
                self._abandoned = True  # start no command after this
                children = list(self._children)
            for child in children:
                _kill(child)
            for worker in workers:
                worker.join(1.0)
            log.warning("on_change: gave up waiting for actions at shutdown after %.0fs", timeout)

    # -- the workers ------------------------------------------------------------------------

    def _start_worker(self, hook: _Hook) -> None:
        """Called holding the lock: give `hook` a worker unless it has one."""
        if hook.worker is None:
            hook.worker = threading.Thread(target=self._work, args=(hook,), name=f"notify-{hook.index}",
                                           daemon=True)
            self._workers.add(hook.worker)
            hook.worker.start()

    def _work(self, hook: _Hook) -> None:
        """Fire `hook` each time it is due; end once it has nothing pending."""
        while True:
            with self._cond:
                while (at := hook.due_at(self._closing)) is not None and at > time.monotonic():
                    self._cond.wait(at - time.monotonic())
                if at is None:
                    self._workers.discard(threading.current_thread())
                    hook.worker = None
                    if hook.retiring and hook in self._hooks:
                        self._hooks.remove(hook)
                    return
                changes, at_start = hook.take()
            self._fire(hook, changes, at_start)

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
            log.warning("on_change.%d (%s) failed: %s", hook.index, _describe(hook.config),
                        _redact(str(exc), hook.config))
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
            status = _http_call(hook.http, hook.timeout)
            log.info("on_change: %s %s -> %d", hook.http.method, _safe_url(hook.http.url), status)

    def _exec(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        with self._cond:
            if self._abandoned:
                raise RuntimeError("not started: the bridge is stopping")
            # Its own session: a Ctrl-C meant for the bridge does not hit it, and a kill reaches
            # everything it started.
            child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            self._children.add(child)
        try:
            status = child.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(child)
            raise RuntimeError(f"timed out after {timeout:g}s; stopped it") from None
        finally:
            with self._cond:
                self._children.discard(child)
        if status != 0:
            raise RuntimeError(f"exit status {status}" if status > 0 else f"killed by signal {-status}")


class _Deadline:
    """Cuts a connection's socket once `seconds` have passed, so that a server answering a byte at
    a time cannot hold the call past its timeout (a socket timeout bounds each read, not the call)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        """Raise if the deadline passed while no socket was there to cut (during connect)."""
        with self._lock:
            if self.expired:
                raise TimeoutError


def _http_call(hook: HttpHook, timeout: float) -> int:
    """One request to `hook.url`, done or failed within `timeout` seconds; returns the status. A
    redirect is an error: it could lead the call off the URL the config checked."""
    parts = urlsplit(hook.url)
    host = parts.hostname or ""
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    port = parts.port or (443 if parts.scheme == "https" else 80)  # given: an IPv6 host holds colons
    conn = connection(host, port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with _Deadline(conn, timeout) as deadline:
            try:
                conn.connect()
                deadline.check()
                conn.request(hook.method, target, body=b"" if hook.method != "GET" else None,
                             headers={"User-Agent": "secrets-bridge"})
                response = conn.getresponse()
                response.read(_HTTP_BODY_MAX_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                if deadline.expired or isinstance(exc, TimeoutError):
                    raise RuntimeError(f"no answer within {timeout:g}s") from None
                raise
    finally:
        conn.close()
    if response.status >= 300:
        raise RuntimeError(f"HTTP {response.status} {response.reason}")
    return response.status


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


def _redact(text: str, hook: OnChange) -> str:
    """`text` without the user, password or query of the hook's URL, whatever quoted them."""
    if hook.http is None:
        return text
    parts = urlsplit(hook.http.url)
    secrets = [parts.netloc.rpartition("@")[0], parts.password, parts.username, parts.query]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _describe(hook: OnChange) -> str:
    if hook.signal is not None:
        return f"signal {hook.signal}"
    if hook.exec is not None:
        return f"exec {hook.exec[0]}"
    return f"http {_safe_url(hook.http.url) if hook.http else ''}"
