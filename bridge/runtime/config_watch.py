"""Watch the config file of `run`: the path as named, each symlink met on the way to the real file,
and that file. Other files in those folders (a log, a hook's output) never trigger a reload.

A Kubernetes ConfigMap mounts `config.yaml -> ..data/config.yaml` and `..data -> ..2026_11_28...`;
an update swaps `..data` by rename, so the link `..data` is among the watched names. After each
reload the chain is resolved again (the swap points into a new folder). watchdog's inotify emitter
can log a spurious error while it is being stopped; that one message is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger("secrets_bridge.run")

#: as the kernel's own limit on links followed in one lookup
_MAX_LINKS = 40


def watched_paths(path: Path) -> set[str]:
    """The path as named, every symlink met while resolving it, and the path it resolves to."""
    named = os.path.abspath(path)
    seen = {named}
    parts = deque(named.split("/"))
    current, links = "/", 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)  # `current` holds no link: this is the real parent
            continue
        candidate = os.path.join(current, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link, or missing: go on with the name as it is
            current = candidate
            continue
        seen.add(candidate)
        links += 1
        if links > _MAX_LINKS:
            break
        if target.startswith("/"):
            current = "/"
        parts.extendleft(reversed(target.split("/")))
    seen.add(current)
    return seen


class _DropInactiveEmitterError(logging.Filter):
    """watchdog logs this when its emitter reads once more while being stopped: nothing is lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


_INACTIVE_FILTER = _DropInactiveEmitterError()


def quiet_watchdog() -> None:
    """Drop that one spurious message of watchdog's (adding the filter again changes nothing)."""
    logging.getLogger("watchdog.observers.inotify").addFilter(_INACTIVE_FILTER)


class ConfigWatch(FileSystemEventHandler):
    """Calls `on_change` (from watchdog's thread) when the config or a link to it changes."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self.on_change = on_change
        self._names: frozenset[str] = frozenset()
        self._folders: dict[str, ObservedWatch] = {}
        self._observer = Observer()
        self._observer.daemon = True
        quiet_watchdog()

    def start(self) -> None:
        self.refresh()
        try:
            self._observer.start()
        except OSError as exc:  # e.g. the inotify watch or instance limit is reached
            log.warning("cannot watch %s for changes (%s); reload it with SIGHUP", self.path, exc.strerror or exc)

    def refresh(self) -> None:
        """Resolve the chain again and watch the folders it runs through now."""
        names = watched_paths(self.path)
        folders = {os.path.dirname(name) for name in names}
        for folder in set(self._folders) - folders:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._folders.pop(folder))
        for folder in folders - set(self._folders):
            try:
                self._folders[folder] = self._observer.schedule(self, folder, recursive=False)
            except OSError as exc:  # a folder that is gone: the next reload resolves again
                log.debug("cannot watch %s: %s", folder, exc.strerror)
        self._names = frozenset(names)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
            return  # our own read of the file, or "something in this folder changed"
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if paths & self._names:
            self.on_change()

    def stop(self) -> None:
        """Stop watchdog's threads and wait for them, so none logs after the bridge stops."""
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)
