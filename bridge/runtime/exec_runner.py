"""The `exec` command: `run`'s loop with the application as the bridge's child.

Start: the first sync fetches every `env:` value and secret and commits the files; a required one
that fails ends the bridge with exit 1 naming each failure, and no child is started. Then the
child starts with its environment (bridge/runtime/child.py). While it runs, the loop keeps the
files and values in step as `run` does; a changed env value (a new version, a lease issued anew,
never a renewal) restarts the child once per burst, after `exec.wait`; with `restart_on: any` a
changed file does too. The signals in `child.FORWARDED` go to the child, not to the bridge (so
the config reloads when its file changes, not on SIGHUP); the bridge stops when the child exits,
does its own shutdown, and exits with the child's status. As PID 1 it reaps orphans.
Never logs a value.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bridge.config.loader import Config
from bridge.engine.cycle import CycleResult, Engine
from bridge.errors import BridgeError
from bridge.observe.changes import Change
from bridge.observe.logs import AuditLog
from bridge.observe.metrics import EXEC_RESTARTS
from bridge.runtime.child import FORWARDED, Child, Quiet, child_environment, reap_orphans
from bridge.runtime.mask import Mask, MaskedOutput
from bridge.runtime.runner import Runner
from bridge.writer.atomic import Writer

log = logging.getLogger("secrets_bridge.exec")

#: signals that, with no child to take them (still starting, or between a restart's two halves), stop the bridge
_STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: at exit, the masked output gets this long to drain what the child wrote
DRAIN_SECONDS = 2.0


class StartFailed(BridgeError):
    """A required env value or secret failed at start: no child was started (exit 1)."""


class ExecRunner(Runner):
    def __init__(self, config_path: Path, config: Config, argv: Sequence[str], *, mask: bool = False,
                 log_format: str | None = None, debug: bool = False) -> None:
        super().__init__(config_path, config, log_format=log_format, debug=debug)
        self.mask = Mask() if mask else None
        self.output = MaskedOutput(self.mask) if self.mask is not None else None
        fds = self.output.child_fds if self.output is not None else (None, None)
        self.child = Child(argv, stdout=fds[0], stderr=fds[1])
        self.started_env: dict[str, bytes] = {}
        self.quiet = Quiet()
        self.restarting = False
        self.reason: list[str] = []
        self._timer: threading.Timer | None = None
        self._previous: dict[int, object] = {}

    def run(self) -> int:
        for forwarded in FORWARDED:
            self._previous[forwarded] = signal.signal(forwarded, self._on_signal)
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        try:
            return self._run()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
            self.wakeup.close()
            if self.output is not None:
                self.output.close(DRAIN_SECONDS)

    # -- signals (handlers only forward, record and wake) -----------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.child.forward(signum) and not self.restarting:
            return
        if signum in _STOPPING:  # no child to decide, or a stop meant for the one being replaced
            self.status = 128 + signum
            self.wakeup.stop_signal = signal.Signals(signum).name
            self.wakeup.request_stop()

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        self.wakeup.set()

    # -- the runner's hooks ----------------------------------------------------------------

    def _engine(self, config: Config, writer: Writer | None = None) -> Engine:
        engine = Engine(config, subscribers=[self.notifier, AuditLog(config.settings.audit_log), self._changed],
                        writer=writer, env=True)
        engine.start()
        return engine

    def _initial_sync(self, engine: Engine) -> CycleResult:
        result = super()._initial_sync(engine)
        if self.child.process is None and not self.wakeup.stop_requested:
            self._first_start(engine, result)
        return result

    def _first_start(self, engine: Engine, result: CycleResult) -> None:
        """Start the child, unless a required value failed: then name every failure and start nothing."""
        if result.write_error is not None:
            raise result.write_error
        failed = {n: e for n, e in result.failed.items() if not engine.outputs[n].optional}
        missing = [n for n in engine.missing_required() if n not in failed]
        if failed or missing:
            named = [f"{n}: {e}" for n, e in failed.items()] + [f"{n}: not made" for n in missing]
            raise StartFailed(f"not starting {self.child.argv[0]!r}: {len(named)} required "
                              f"value{'s' if len(named) > 1 else ''} failed: {'; '.join(named)}")
        self._start_child()

    def _woke(self) -> None:
        if os.getpid() == 1:
            reap_orphans(self.child, self.notifier.running_pids)
        status = self.child.poll()
        if status is not None and not self.wakeup.stop_requested and not self.restarting:
            log.info("%s (pid %s) exited with status %d; stopping", self.child.argv[0], self.child.pid, status)
            self.status = status
            self.wakeup.request_stop()
            return
        if self.quiet.ready(time.monotonic()) and not self.wakeup.stop_requested:
            self._restart()

    def _stopping(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.child.running():  # the loop ended without the child ending (an error): it goes first
            settings = self.config.settings.exec
            status = self.child.stop(settings.stop_signum, settings.stop_timeout)
            if status is not None and self.status == 0:
                self.status = status

    # -- the child -------------------------------------------------------------------------

    def _start_child(self) -> None:
        values = self.engine.env.values()
        if self.mask is not None:  # files a former run wrote, unchanged since, came with no Change
            self.mask.add(f.spec.content for f in self.engine.files.by_name.values() if f.spec is not None)
        self._conceal()
        credentials = (name for cls, _ in self.config.providers.values() for name in cls.credential_env)
        self.child.start(child_environment(os.environb, values, credentials))
        self.started_env = values
        log.info("started %s (pid %s) with %d env value%s", self.child.argv[0], self.child.pid, len(values),
                 "" if len(values) == 1 else "s")

    def _conceal(self) -> None:
        """Give the mask every env value, and the fields templates read (a password inside a URL)."""
        if self.mask is not None:
            self.mask.add(self.engine.env.values().values())
            self.mask.add(part for output in self.engine.outputs.values() for part in output.parts())

    def _changed(self, changes: list[Change]) -> None:
        """A commit subscriber: conceal new values; plan a restart when what the child got changed."""
        if self.mask is not None:
            specs = (self.engine.files.spec(c.file) for c in changes if c.kind == "file")
            self.mask.add(spec.content for spec in specs if spec is not None)
            self._conceal()
        moved = self._restart_reasons(changes)
        if moved:
            self.reason += moved
            self._restart_after_wait()

    def _restart_reasons(self, changes: list[Change]) -> list[str]:
        """What changed that the child got (`restart_on`): env values, and with `any` files too."""
        settings = self.config.settings.exec
        if not self.child.running() or settings.restart_on == "never":
            return []
        moved = [c.file for c in changes if c.kind == "env"] if self.engine.env.values() != self.started_env else []
        if settings.restart_on == "any":
            moved += [c.file for c in changes if c.kind == "file"]
        return moved

    def _restart_after_wait(self) -> None:
        """Wake the loop for the restart once the burst is quiet (`wait`, as on_change's)."""
        settings = self.config.settings.exec
        due = self.quiet.add(time.monotonic(), settings.wait.min, settings.wait.max or 0.0)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(max(0.0, due - time.monotonic()), self.wakeup.set)
        self._timer.daemon = True
        self._timer.start()

    def _restart(self) -> None:
        self.quiet.clear()
        reason, self.reason = self.reason, []
        names = ", ".join(dict.fromkeys(reason[:10])) + (", ..." if len(reason) > 10 else "")
        settings = self.config.settings.exec
        log.info("restarting %s (pid %s): %s changed", self.child.argv[0], self.child.pid, names)
        self.restarting, self.engine.waiting = True, True  # waiting for the child is no stall for /healthz
        try:
            status = self.child.stop(settings.stop_signum, settings.stop_timeout)
        finally:
            self.restarting, self.engine.waiting = False, False
            self.engine.heartbeat = time.monotonic()
        log.info("%s stopped (status %s) for the restart", self.child.argv[0], status)
        if self.wakeup.stop_requested:  # a stop signal came during the restart: the old child took it
            self.status = status if status is not None else self.status
            return
        self._start_child()
        EXEC_RESTARTS.labels(reason="env" if any(n.startswith("$") for n in reason) else "file").inc()
