"""When to look for drift in the output directory: as soon as inotify tells of a change, instead of a
sweep on a short clock that costs a `lstat` per file while nothing happens.

Two watches (watchdog, inotify): the output directory itself (its visible links and `..data`) and
the current generation with its folders, moved to each new generation after a commit. Reads never
wake anything (no open or close events are asked for). The writer's own work beside the
generation (spare generations made and renamed in, replaced ones removed, its state and lease
files) is not drift: events on `..` names other than `..data`, and on names it reserves
(`.secrets-bridge*`), are ignored, so a commit costs one sweep, for its `..data` swap.

The sweep stays the judge (`Writer.check_drift()`): an event only brings it forward. It still runs
every `SAFETY_SWEEP_SECONDS` for what inotify cannot see (a file edited through another hard link),
and every `FALLBACK_SWEEP_SECONDS` when a watch cannot be set (the inotify limits are reached).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from bridge.config.fields import RESERVED_PREFIX
from bridge.runtime.config_watch import quiet_watchdog
from bridge.writer.links import DATA_LINK

log = logging.getLogger("secrets_bridge.writer")

#: after the first event, wait this long so a burst (an `rm -r`, a copy) is repaired in one sweep
SETTLE_SECONDS = 0.3
#: without an event, sweep this often all the same
SAFETY_SWEEP_SECONDS = 60.0
#: without a working watch, sweep this often (SPEC: drift is repaired within 5 seconds)
FALLBACK_SWEEP_SECONDS = 4.0

#: what a change looks like; no open, read or close-without-write events
_CHANGES: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent,
    FileModifiedEvent, DirModifiedEvent, FileAttribEvent, DirAttribEvent,
]


class DriftWatch(FileSystemEventHandler):
    """Says when the next drift sweep is due. `on_event` (called from watchdog's thread, once per
    quiet spell) wakes the loop; `follow` keeps the watches on the directory and generation.
    Without `on_event` nothing could wake the loop, so nothing is watched: a sweep every
    FALLBACK_SWEEP_SECONDS."""

    def __init__(self, on_event: Callable[[], object] | None = None) -> None:
        self.on_event = on_event
        self._changed_at: float | None = None  # the first event since the last sweep
        self._last_sweep = time.monotonic()
        self._retry_at: float | None = None  # a sweep that failed is tried again then
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._top: ObservedWatch | None = None
        self._generation: ObservedWatch | None = None
        self._followed: tuple[int, int, str | None] | None = None
        self._top_path = ""
        self._generation_path = ""
        self._failing = False

    def follow(self, output_dir: Path, generation: str | None) -> None:
        """Watch `output_dir` and its current `generation` (nothing to do when already watched)."""
        if self.on_event is None:
            return
        try:
            st = os.stat(output_dir)
        except OSError:
            return  # removed: the sweep makes it again, then this watches the new one
        key = (st.st_dev, st.st_ino, generation)
        if key == self._followed:
            return
        try:
            if self._observer is None:
                quiet_watchdog()
                self._observer = Observer()
                self._observer.daemon = True
                self._observer.start()
            if self._followed is None or self._followed[:2] != key[:2]:
                self._unschedule(self._top)
                self._top_path = os.path.realpath(output_dir)  # a watch on a symlink would see only the link
                self._top = self._schedule(self._top_path, recursive=False)
            self._unschedule(self._generation)
            self._generation, self._generation_path = None, ""
            if generation is not None:
                self._generation_path = os.path.join(self._top_path, generation)
                self._generation = self._schedule(self._generation_path, recursive=True)
        except OSError as exc:  # the inotify watch or instance limit, or the folder went meanwhile
            if not self._failing:
                log.warning("cannot watch %s for drift (%s); checking it every %.0fs instead",
                            output_dir, exc.strerror or exc, FALLBACK_SWEEP_SECONDS)
            self._failing = True
            self._followed = None
            return
        if self._failing:
            log.info("watching %s for drift again", output_dir)
        self._failing = False
        self._followed = key
        # Anything between the commit and this watch is seen by the sweep its `..data` event brings.

    def next_sweep(self) -> float:
        """The monotonic time the next sweep is due."""
        if self._followed is None:
            return self._last_sweep + FALLBACK_SWEEP_SECONDS
        due = self._last_sweep + SAFETY_SWEEP_SECONDS
        if self._retry_at is not None:
            due = min(due, self._retry_at)
        if self._changed_at is not None:
            due = min(due, self._changed_at + SETTLE_SECONDS)
        return due

    def sweeping(self) -> None:
        """A sweep starts now: events from here on call for another."""
        self._changed_at = self._retry_at = None
        self._last_sweep = time.monotonic()

    def failed(self) -> None:
        """The sweep could not repair (a full tmpfs, a directory not yet made again): try again
        soon, as events may not come."""
        self._retry_at = time.monotonic() + FALLBACK_SWEEP_SECONDS

    def stop(self) -> None:
        """Stop watchdog's threads and wait for them, so none logs after the bridge stops."""
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None
        self._followed = self._top = self._generation = None

    # -- watchdog ----------------------------------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._is_own_work(event):
            return
        if self._changed_at is None and self.on_event is not None:
            self._changed_at = time.monotonic()
            self.on_event()

    def _is_own_work(self, event: FileSystemEvent) -> bool:
        """The writer's own steps beside the generation, seen by the watch of the directory."""
        paths = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
        if paths[0] == self._top_path:
            return event.event_type == "modified"  # a name in it changed: told on its own
        if self._generation_path and self._generation_path in paths:
            return False  # the generation itself, told by its own watch
        names = [os.path.basename(p) for p in paths if os.path.dirname(p) == self._top_path]
        return len(names) == len([p for p in paths if p]) and all(
            (n.startswith("..") and n != DATA_LINK) or n.startswith(RESERVED_PREFIX) for n in names)

    def _schedule(self, path: str, *, recursive: bool) -> ObservedWatch:
        assert self._observer is not None
        return self._observer.schedule(self, path, recursive=recursive, event_filter=_CHANGES)

    def _unschedule(self, watch: ObservedWatch | None) -> None:
        if watch is not None and self._observer is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)
