"""How the main loop of `run` waits: a self-pipe that signal handlers and threads write one byte to.

A signal handler here only records the signal and writes a byte; it never takes a lock. Python
runs handlers in the main thread between bytecodes, so a handler that takes a lock the interrupted
code already holds (as `threading.Event.set()` does when the loop is inside `Event.wait()`)
deadlocks the loop. A signal interrupts `select`; Python runs the handler, whose byte makes the
retried `select` return at once.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from types import FrameType

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Wakeup:
    """What the loop waits on: `wait(timeout)` returns early once `set()` was called.

    `set()` is safe from a signal handler and from any thread. `stop_requested` and
    `reload_requested` say why; the loop resets `reload_requested` when it has acted on it."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        # A second pipe only for stop requests, read by the runner's shutdown deadline thread.
        self._stop_reader, self._stop_writer = socket.socketpair()
        for sock in (self._reader, self._writer, self._stop_reader, self._stop_writer):
            sock.setblocking(False)
        self._pending = False
        self.stop_requested = False
        self.reload_requested = False
        #: the last stop signal's name, for the loop to log (a handler must not log)
        self.stop_signal: str | None = None
        self._previous: dict[int, object] = {}

    # -- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        """SIGTERM/SIGINT request a stop, SIGHUP a reload. Call from the main thread."""
        for signum in _STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_stop)
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)

    def restore_signals(self) -> None:
        """Put back the handlers that were there before (the CLI's keeps SIGHUP harmless)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signal.Signals(signum).name
        self.request_stop()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()

    # -- waiting ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_requested = True
        with contextlib.suppress(OSError):
            self._stop_writer.send(b"\0")
        self.set()

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Block (in a thread other than the loop's) until a stop is requested; True if it was."""
        with contextlib.suppress(ValueError, OSError):  # closed
            select.select([self._stop_reader], [], [], timeout)
        return self.stop_requested

    def request_reload(self) -> None:
        # Only the first request wakes the loop: while one is pending (or deferred by the loop), a
        # flood of SIGHUPs must not keep interrupting the engine before it can sync.
        if not self.reload_requested:
            self.reload_requested = True
            self.set()

    def set(self) -> None:
        """Make `wait` return now and `is_set` true until `clear`. Never blocks, never locks."""
        self._pending = True
        with contextlib.suppress(OSError):  # the buffer is full (a wake-up is pending), or closed
            self._writer.send(b"\0")

    def is_set(self) -> bool:
        return self._pending

    def wait(self, timeout: float | None = None) -> None:
        """Return after `timeout` seconds, or as soon as `set()` is called."""
        if self._pending:
            return
        try:
            select.select([self._reader], [], [], None if timeout is None else max(0.0, timeout))
        except ValueError:
            return  # closed
        self._drain()

    def clear(self) -> None:
        # Reset the flag before draining: a set() in between keeps the flag, which is the truth.
        self._pending = False
        self._drain()

    def _drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass  # empty (BlockingIOError) or closed

    def close(self) -> None:
        self.restore_signals()
        for sock in (self._reader, self._writer, self._stop_reader, self._stop_writer):
            sock.close()
