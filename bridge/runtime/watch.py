"""What `run` watches, through its one inotify reader (`inotify.Watcher`): the config file
(`ConfigWatch`, a reload when it changes) and the output directory (`DriftWatch`, when the next
drift sweep is due). Both are told from the reader's thread; neither reads a file or logs a value.

The config: the path as named, each symlink met on the way to the real file, and that file. Other
files in those folders (a log, a hook's output) never trigger a reload. A Kubernetes ConfigMap
mounts `config.yaml -> ..data/config.yaml` and `..data -> ..2026_11_28...`; an update swaps `..data`
by rename, so the link `..data` is among the watched names. After each reload the chain is resolved
again (the swap points into a new folder).

The output directory: as soon as inotify tells of a change the sweep is brought forward, instead of
a sweep on a short clock that costs a `lstat` per file while nothing happens. Two watches: the
directory itself (its visible links and `..data`) and the current generation with its folders,
moved to each new generation after a commit. Reads wake nothing (no open or close events are
asked for). The writer's own work beside the generation (spare generations made and renamed in,
replaced ones removed, its state and lease files) is not drift: events on `..` names other than
`..data`, and on names it reserves (`.secrets-bridge*`), are ignored, so a commit costs one sweep,
for its `..data` swap. A folder someone adds inside the generation is not watched in turn: the
sweep its creation brings removes it.

The sweep stays the judge (`Writer.check_drift()`): an event only brings it forward. It still runs
every `SAFETY_SWEEP_SECONDS` for what inotify cannot see (a file edited through another hard link),
and every `FALLBACK_SWEEP_SECONDS` when a watch cannot be set (the inotify limits are reached).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from bridge.config.fields import RESERVED_PREFIX
from bridge.inotify_queue import IN_Q_OVERFLOW, watch_limit_error
from bridge.runtime.inotify import Handle, Watcher
from bridge.writer.links import DATA_LINK

log = logging.getLogger("secrets_bridge.run")
drift_log = logging.getLogger("secrets_bridge.writer")

#: as the kernel's own limit on links followed in one lookup
_MAX_LINKS = 40
#: after the first event, wait this long so a burst (an `rm -r`, a copy) is repaired in one sweep
SETTLE_SECONDS = 0.3
#: without an event, sweep this often all the same
SAFETY_SWEEP_SECONDS = 60.0
#: without a working watch, sweep this often (SPEC: drift is repaired within 5 seconds)
FALLBACK_SWEEP_SECONDS = 4.0


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


class ConfigWatch:
    """Calls `on_change` (from the watcher's thread) when the config or a link to it changes."""

    def __init__(self, path: Path, on_change: Callable[[], None], watcher: Watcher | None = None) -> None:
        self.path = path
        self.on_change = on_change
        self._names: frozenset[str] = frozenset()
        self._folders: dict[str, Handle] = {}
        self._watcher = watcher or Watcher()
        self._own_watcher = watcher is None

    def start(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Resolve the chain again and watch the folders it runs through now."""
        names = watched_paths(self.path)
        folders = {os.path.dirname(name) for name in names}
        self._names = frozenset(names)
        for folder in set(self._folders) - folders:
            self._watcher.remove(self._folders.pop(folder))
        for folder in folders - set(self._folders):
            try:
                self._folders[folder] = self._watcher.add(folder, self._on_event)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # gone: the next reload resolves again
                    log.debug("cannot watch %s: %s", folder, exc.strerror)
                else:  # e.g. the inotify watch or instance limit is reached
                    log.warning("cannot watch %s for changes (%s); reload it with SIGHUP", self.path,
                                watch_limit_error(exc))

    def _on_event(self, folder: str, name: str, mask: int) -> None:
        if mask & IN_Q_OVERFLOW or (os.path.join(folder, name) if name else folder) in self._names:
            self.on_change()

    def stop(self) -> None:
        """Let the folders go (and the watcher, when this watch made it)."""
        for handle in self._folders.values():
            self._watcher.remove(handle)
        self._folders.clear()
        if self._own_watcher:
            self._watcher.stop()


class DriftWatch:
    """Says when the next drift sweep is due. `on_event` (called from the watcher's thread, once per
    quiet spell) wakes the loop; `follow` keeps the watches on the directory and generation.
    Without `on_event` nothing could wake the loop, so nothing is watched: a sweep every
    FALLBACK_SWEEP_SECONDS."""

    def __init__(self, on_event: Callable[[], object] | None = None, watcher: Watcher | None = None) -> None:
        self.on_event = on_event
        self._changed_at: float | None = None  # the first event since the last sweep
        self._last_sweep = time.monotonic()
        self._retry_at: float | None = None  # a sweep that failed is tried again then
        self._watcher = watcher
        self._own_watcher = watcher is None
        self._top: Handle | None = None
        self._generation: list[Handle] = []
        self._followed: tuple[int, int, str | None] | None = None
        self._top_path = ""
        self._generation_name = ""
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
            self._watch(output_dir, key)
        except OSError as exc:  # the inotify watch or instance limit, or the folder went meanwhile
            if not self._failing:
                drift_log.warning("cannot watch %s for drift (%s); checking it every %.0fs instead",
                                  output_dir, watch_limit_error(exc), FALLBACK_SWEEP_SECONDS)
            self._failing = True
            self._followed = None
            return
        if self._failing:
            drift_log.info("watching %s for drift again", output_dir)
        self._failing = False
        self._followed = key
        # Anything between a commit and the generation's watch is seen by the sweep its `..data`
        # event brings.

    def _watch(self, output_dir: Path, key: tuple[int, int, str | None]) -> None:
        if self._watcher is None:
            self._watcher = Watcher()
        if self._followed is None or self._followed[:2] != key[:2]:
            self._watcher.remove(self._top)
            self._top = None
            self._top_path = os.path.realpath(output_dir)  # a watch on a symlink would see only the link
            self._top = self._watcher.add(self._top_path, self._on_top)
            # What changed before this watch was set (between the first commit and now) is seen by
            # a sweep soon, as no event will tell of it.
            self._changed_at = self._changed_at or time.monotonic()
        self._unwatch_generation()
        generation = key[2]
        if generation is None:
            return
        self._generation_name = generation
        root = os.path.join(self._top_path, generation)
        self._generation.append(self._watcher.add(root, self._on_generation))
        for folder, dirs, _ in os.walk(root):
            for name in dirs:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile: its event is seen
                    self._generation.append(self._watcher.add(os.path.join(folder, name), self._on_generation))

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
        """Let the watches go (and the watcher, when this watch made it), so no event wakes anything
        after the bridge stops."""
        if self._watcher is not None:
            self._unwatch_generation()
            self._watcher.remove(self._top)
            if self._own_watcher:
                self._watcher.stop()
                self._watcher = None
        self._followed = self._top = None

    # -- events (the watcher's thread) --------------------------------------------------------

    def _on_top(self, folder: str, name: str, mask: int) -> None:
        if not _is_own_work(name, self._generation_name):
            self._changed()

    def _on_generation(self, folder: str, name: str, mask: int) -> None:
        self._changed()

    def _changed(self) -> None:
        if self._changed_at is None and self.on_event is not None:
            self._changed_at = time.monotonic()
            self.on_event()

    def _unwatch_generation(self) -> None:
        handles, self._generation, self._generation_name = self._generation, [], ""
        if self._watcher is not None:
            for handle in handles:
                self._watcher.remove(handle)


def _is_own_work(name: str, generation: str) -> bool:
    """The writer's own steps beside the generation, seen by the watch of the directory: `..` names
    but `..data` and the current generation, and its reserved names. An event on the directory
    itself (its mode, its removal, lost events) is no one's own work."""
    if not name or name in (DATA_LINK, generation):
        return False
    return name.startswith("..") or name.startswith(RESERVED_PREFIX)
