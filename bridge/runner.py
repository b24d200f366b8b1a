"""The long-running `run` command: sync, serve the endpoints, keep in step, reload the config.

SIGTERM/SIGINT only set an event, so the commit in progress always finishes before exit. The
config is reloaded on SIGHUP or when its file changes (watched with watchdog, which also sees a
Kubernetes ConfigMap's symlink swap); a reload is validated first, an invalid one is logged and the
running config stays.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bridge.config import Config, load_config
from bridge.engine import Engine
from bridge.errors import BridgeError, ConfigError, WriteError
from bridge.notify import Notifier
from bridge.server import HealthServer
from bridge.writer import Writer

log = logging.getLogger("secrets_bridge.run")

#: wait this long after a file event before reading, so an editor's write is complete
RELOAD_SETTLE_SECONDS = 0.3


class _ConfigWatch(FileSystemEventHandler):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.runner.reload_requested = True
        self.runner.wake.set()


class Runner:
    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = False

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current cycle", signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.engine = self._engine(self.config)
        server = None
        if self.config.settings.listen:
            try:
                server = HealthServer(lambda: self.engine, self.config.settings.listen)
            except OSError as exc:
                raise WriteError(f"listen: cannot bind {self.config.settings.listen}: {exc.strerror}") from None
            server.start()  # before the first sync, so probes see "alive, not ready yet"
        watcher = Observer()
        # The folder as named, not resolved: a ConfigMap swaps its `..data` link there, while the
        # folder a resolved path points into is deleted at the next update.
        watcher.schedule(_ConfigWatch(self), str(self.config_path.absolute().parent), recursive=False)
        watcher.daemon = True
        watcher.start()
        try:
            self._initial_sync(self.engine)
            while not self.stop.is_set():
                self.engine.run(self.wake)
                self.wake.clear()
                if self.reload_requested and not self.stop.is_set():
                    time.sleep(RELOAD_SETTLE_SECONDS)
                    self.reload_requested = False
                    self._reload()
        finally:
            watcher.stop()
            if server is not None:
                server.stop()
            if self.config.settings.cleanup_on_exit:
                self.engine.writer.clear()
                self.engine.state.path.unlink(missing_ok=True)
                self.engine.leases.remove()
                log.info("removed the secrets from %s (cleanup_on_exit)", self.config.settings.output_dir)
            self.engine.close(revoke=True)
        log.info("stopped")
        return 0

    def _engine(self, config: Config, writer: Writer | None = None) -> Engine:
        notifier = Notifier(config.settings.on_change)
        engine = Engine(config, subscribers=[lambda changes: notifier([c.entry for c in changes])], writer=writer)
        engine.start()
        return engine

    def _initial_sync(self, engine: Engine) -> None:
        result = engine.sync()
        log.info("sync: %d secrets, %d failed", len(engine.settings.secrets), len(result.failed))

    def _reload(self) -> None:
        """Validate and build the new config's engine first; only then replace the running one."""
        try:
            config = load_config(self.config_path)
            if config.settings == self.config.settings:
                return  # the file was touched but says the same
            if config.settings.output_dir != self.config.settings.output_dir:
                raise ConfigError("output_dir cannot change while running")
            new = self._engine(config, writer=self.engine.writer)
        except BridgeError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            return
        log.info("config reloaded from %s", self.config_path)
        self.engine.close(release=False)
        self.config, self.engine = config, new
        self._initial_sync(new)
