"""The long-running `run` command: sync, serve the endpoints, keep in step, reload the config.

Signal handlers only record the signal in a `Wakeup` (a self-pipe) that the loop waits on, so the
commit in progress always finishes before exit, and no burst of signals can wedge the loop. The
config is reloaded on SIGHUP or when the file (or a link to it) changes; a reload is validated
first, and an invalid one is logged while the running config stays. A reload applies everything
but `output_dir` and `listen` (one changing rejects it, naming the field); `log_format` switches
the log lines, and `require_tmpfs` newly set is checked before the reload is accepted.
Notifications run on their own threads (`Notifier`, one per action while it has work); at shutdown
they get `NOTIFY_GRACE_SECONDS`, then the bridge goes.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from pathlib import Path

from bridge.config.fields import STATE_FILE
from bridge.config.loader import BridgeConfig, Config, load_config
from bridge.engine.cycle import CycleResult, Engine
from bridge.errors import BridgeError, ConfigError, WriteError
from bridge.observe.logs import AuditLog, setup_logging
from bridge.runtime.inotify import Watcher
from bridge.runtime.loop import Loop
from bridge.runtime.notify import Notifier
from bridge.runtime.wakeup import Wakeup
from bridge.runtime.watch import ConfigWatch, DriftWatch
from bridge.writer.atomic import Writer, is_memory_backed

log = logging.getLogger("secrets_bridge.run")

#: wait this long after a file event before reading, so an editor's write is complete
RELOAD_SETTLE_SECONDS = 0.3
#: at most one reload per this many seconds, so a flood of SIGHUPs or file events leaves the engine
#: time to sync in between
RELOAD_MIN_INTERVAL_SECONDS = 1.0
#: at shutdown, pending on_change actions get this long, then the bridge exits anyway
NOTIFY_GRACE_SECONDS = 3.0
#: a cycle still running this long after SIGTERM is stuck in a provider call: exit without it
STOP_DEADLINE_SECONDS = 5.0


#: settings a reload cannot apply: a reload changing one is rejected, naming it
RESTART_FIELDS = ("output_dir", "listen")


class Runner:
    #: the exit status once stopped (exec: its child's)
    status = 0

    def __init__(self, config_path: Path, config: Config, *, log_format: str | None = None,
                 debug: bool = False) -> None:
        """`log_format`: given on the command line, it wins over the config's, reloads included."""
        self.config_path = config_path
        self.config = config
        self.cli_log_format = log_format
        self.debug = debug
        self.wakeup = Wakeup()
        self.watcher = Watcher()  # one inotify reader for the config file and the output directory
        self.drift = DriftWatch(self.wakeup.set, self.watcher)  # one for the directory, across reloads

    def run(self) -> int:
        self.wakeup.install_signals()  # first: nothing before this may be slow
        try:
            return self._run()
        finally:
            self.wakeup.close()

    def _run(self) -> int:
        self.notifier = Notifier(self.config.settings.on_change)
        self.engine = self._engine(self.config)
        self.loop = Loop(self.engine, self.drift)
        server = None
        if self.config.settings.listen:
            from bridge.runtime.server import HealthServer  # and prometheus_client: only where /metrics is served

            try:
                server = HealthServer(lambda: self.engine, self.config.settings.listen)
            except OSError as exc:
                self.engine.close()
                raise WriteError(f"listen: cannot bind {self.config.settings.listen}: {exc.strerror}") from None
            server.start()  # before the first sync, so probes see "alive, not ready yet"
        watch = ConfigWatch(self.config_path, self.wakeup.request_reload, self.watcher)
        watch.start()
        deferred: threading.Timer | None = None
        loop_done = threading.Event()
        threading.Thread(target=self._stop_deadline, args=(loop_done,), name="stop-deadline", daemon=True).start()
        try:
            if not self.wakeup.stop_requested:
                self._initial_sync(self.engine)
            self.notifier.started()
            last_reload = -math.inf
            while not self.wakeup.stop_requested:
                self.loop.run(self.wakeup)
                self.wakeup.clear()
                self._woke()
                if not self.wakeup.reload_requested or self.wakeup.stop_requested:
                    continue
                too_soon = last_reload + RELOAD_MIN_INTERVAL_SECONDS - time.monotonic()
                if too_soon > 0:
                    # Come back then; until then further requests do not wake the loop.
                    if deferred is None or not deferred.is_alive():  # other wakes find it set already
                        deferred = threading.Timer(too_soon, self.wakeup.set)
                        deferred.daemon = True
                        deferred.start()
                    continue
                time.sleep(RELOAD_SETTLE_SECONDS)
                self.wakeup.reload_requested = False
                self._reload()
                watch.refresh()
                last_reload = time.monotonic()
            loop_done.set()
            log.info("received %s: stopping", self.wakeup.stop_signal or "a stop request")
        finally:
            loop_done.set()
            self._stopping()
            if deferred is not None:
                deferred.cancel()
            watch.stop()
            self.drift.stop()
            self.watcher.stop()
            if server is not None:
                server.stop()
            self.notifier.close(NOTIFY_GRACE_SECONDS)
            self.engine.revoke_leases()  # only those of providers with revoke_on_exit
            if self.config.settings.cleanup_on_exit:
                self.engine.writer.clear()
                self.engine.writer.remove_state(STATE_FILE)
                self.engine.leases.store.remove()
                log.info("removed the secrets from %s (cleanup_on_exit)", self.config.settings.output_dir)
            self.engine.close()
        log.info("stopped")
        return self.status

    def _woke(self) -> None:
        """The loop was woken (a signal, a file event, a timer): `exec` looks at its child here."""

    def _stopping(self) -> None:
        """The loop has ended; shutdown follows (`exec` makes sure its child is gone first)."""

    def _stop_deadline(self, loop_done: threading.Event) -> None:
        """After a stop request, give the cycle in progress STOP_DEADLINE_SECONDS to finish.

        A cycle that takes longer is waiting on a provider (an unreachable vault, a slow answer),
        not committing: a commit takes milliseconds. Exiting then loses no file: a commit is one
        rename, and the next start removes anything left half-made."""
        if not self.wakeup.wait_for_stop() or loop_done.wait(STOP_DEADLINE_SECONDS):
            return
        log.warning("the cycle in progress is still waiting on a provider %.0fs after %s; exiting without it",
                    STOP_DEADLINE_SECONDS, self.wakeup.stop_signal or "the stop request")
        logging.shutdown()
        os._exit(self.status)

    def _engine(self, config: Config, writer: Writer | None = None) -> Engine:
        engine = Engine(config, subscribers=[self.notifier, AuditLog(config.settings.audit_log)], writer=writer)
        engine.start()
        return engine

    def _initial_sync(self, engine: Engine) -> CycleResult:
        result = engine.sync()
        required = [n for n in result.failed if not engine.outputs[n].optional]
        level = logging.ERROR if result.write_error else logging.WARNING if required else logging.INFO
        log.log(level, "%s", result.summary(engine.outputs))
        # What start-up built lives as long as the engine: keep the collector from walking it again
        # and again (at 10,000 secrets a full collection pauses the loop for 100-200 ms). It was
        # off while that was built (bridge/cli.py, `_reload`).
        gc.collect()
        gc.freeze()
        gc.enable()
        return result

    def _reload(self) -> None:
        """Validate and build the new config's engine first; only then replace the running one."""
        gc.disable()  # while the new engine is built, as at start-up; its first sync turns it on
        try:
            self._rebuild()
        finally:
            gc.enable()

    def _rebuild(self) -> None:
        try:
            config = load_config(self.config_path)
            if config.settings == self.config.settings:
                return  # the file was touched but says the same
            _check_reloadable(self.config.settings, config.settings)
            new = self._engine(config, writer=self.engine.writer)
        except BridgeError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            return
        except Exception as exc:  # MemoryError included: a reload never takes the running bridge down
            log.error("config reload rejected, keeping the running config: it could not be loaded (%s)",
                      type(exc).__name__)
            return
        if self.cli_log_format is None and config.settings.log_format != self.config.settings.log_format:
            setup_logging(config.settings.log_format, self.debug)
        log.info("config reloaded from %s", self.config_path)
        self.engine.close(release=False)
        self.config, self.engine = config, new
        self.loop.use(new)
        self.notifier.replace(config.settings.on_change)
        self._initial_sync(new)


def _check_reloadable(running: BridgeConfig, reloaded: BridgeConfig) -> None:
    """Raise ConfigError naming a setting the reload changes but cannot apply, or `require_tmpfs`
    newly set over a disk-backed output directory (checked before anything is accepted)."""
    for name in RESTART_FIELDS:
        if getattr(reloaded, name) != getattr(running, name):
            raise ConfigError(f"{name} cannot change while running; restart the bridge to apply it")
    if reloaded.require_tmpfs and not is_memory_backed(Path(reloaded.output_dir)):
        raise ConfigError(f"require_tmpfs: output_dir {reloaded.output_dir} is on a disk-backed filesystem")
