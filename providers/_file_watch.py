"""The `file` provider's memory of its files' versions, kept only while inotify says nothing moved.

A version (bridge's `file_version`, from a stat) is remembered once the folders on the file's way
are watched: every folder from `/` down to the file, for the path as written and for every path a
symlink on the way leads to (a Kubernetes volume's `x -> ..data/x`, `..data -> ..2026_...`). An
event naming a remembered file forgets that file; an event naming anything else on a way (a folder,
a symlink: `..data` swapped) forgets everything, as does a lost event (queue overflow), a watched
folder that goes, and the sweep every SWEEP_SECONDS (for what inotify cannot see: a volume mounted
over a folder, a write on another machine of a network filesystem). A file forgotten is stat-ed at
the next check, as every file is without a watch. So an idle check of 100,000 files costs dictionary
lookups, not 100,000 stats; and while inotify refuses (its watch or instance limits) nothing is
remembered or asked of it again until a sweep's time has passed: a stat per file, as without a
watch. Never reads a file, never logs a path's content.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from bridge.inotify_queue import IN_DELETE_SELF, IN_IGNORED, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_UNMOUNT, InotifyQueue

#: everything is stat-ed again this often, whatever inotify said (what it cannot see)
SWEEP_SECONDS = 60.0
#: a path through more symlinks than this is not remembered (Linux's own limit is 40)
_MAX_LINKS = 40
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED | IN_Q_OVERFLOW


class FileVersions:
    """Remembered versions by path (as the provider opens it: absolute)."""

    def __init__(self) -> None:
        self._queue: InotifyQueue | None = None
        self._versions: dict[str, str] = {}
        #: a resolved file -> the remembered paths that lead to it through a symlink
        self._targets: dict[str, list[str]] = {}
        self._linked: set[str] = set()  # the remembered paths in `_targets` already
        #: every other name on a remembered file's way (folders, symlinks)
        self._ways: set[str] = set()
        self._folders: dict[str, int] = {}  # watched folder -> watch descriptor
        self._names: dict[int, list[str]] = {}  # watch descriptor -> the folder's names (one inode, two paths)
        self._resolved: dict[str, list[str] | None] = {}  # folder -> the names its resolution passes
        self._swept = time.monotonic()
        #: when inotify last refused an instance or a watch (its limits): nothing is remembered, and
        #: nothing asked of it again, until a sweep's time has passed
        self._refused_at: float | None = None

    def refresh(self) -> dict[str, str]:
        """Forget what the events queued since the last call name (everything at a sweep); the
        versions still remembered, by path (read-only: `remember` adds to them)."""
        if self._queue is None:
            return self._versions
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            self._forget_all()
            return self._versions
        for wd, mask, name in self._queue.drain():
            if mask & _GONE:
                self._forget_all()
                break
            for folder in self._names.get(wd, ()):
                self._forget(os.path.join(folder, name))
        return self._versions

    def remember(self, path: str, version: str, info: os.stat_result) -> None:
        """Remember `path`'s version (of a regular file), found by a stat made after `watch(path)`
        returned True."""
        if stat.S_ISREG(info.st_mode):
            self._versions[path] = version

    def watch(self, path: str) -> bool:
        """Watch every folder on `path`'s way (call before the stat whose version is remembered);
        False when that is not possible (the path cannot be resolved, a watch is refused)."""
        if self._refused_at is not None and time.monotonic() - self._refused_at < SWEEP_SECONDS:
            return False  # not an lstat and a refused watch per file per check: a stat is cheaper
        if self._queue is None:
            try:
                self._queue = InotifyQueue()
            except OSError:
                self._refused_at = time.monotonic()
                return False
        way = self._way(path)
        if way is None:
            return False
        folder, leaf = way
        if not all(self._watch(os.path.dirname(name)) for name in (*folder, *leaf)):
            return False
        self._ways.update(folder)
        if path not in self._linked and leaf != [path]:
            self._linked.add(path)
            for name in leaf:
                if name != path:
                    self._targets.setdefault(name, []).append(path)
        return True

    def close(self) -> None:
        """Forget everything and close the instance (asked again, it watches anew)."""
        self._forget_all()
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    # -- inside ------------------------------------------------------------------------------

    def _forget(self, name: str) -> None:
        if name in self._ways:
            self._forget_all()
            return
        self._versions.pop(name, None)
        for path in self._targets.get(name, ()):
            self._versions.pop(path, None)

    def _forget_all(self) -> None:
        """Forget every version and every watch (a moved folder's watch would name it wrongly)."""
        self._versions.clear()
        self._targets.clear()
        self._linked.clear()
        self._ways.clear()
        self._resolved.clear()
        if self._queue is not None:
            for wd in self._folders.values():
                self._queue.remove(wd)
            self._queue.drain()
        self._folders.clear()
        self._names.clear()
        self._swept = time.monotonic()

    def _watch(self, folder: str) -> bool:
        if folder in self._folders:
            return True
        assert self._queue is not None
        try:
            wd = self._queue.add(folder)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):  # the watch limit, not this folder's doing
                self._refused_at = time.monotonic()
            return False
        self._folders[folder] = wd
        self._names.setdefault(wd, []).append(folder)
        return True

    def _way(self, path: str) -> tuple[list[str], list[str]] | None:
        """The names a lookup of absolute `path` passes: those resolving its folder (shared by the
        folder's files, worked out once) and those from the resolved folder on, the last being the
        file it resolves to; None when it cannot be resolved."""
        folder, leaf = os.path.split(path)
        if folder not in self._resolved:
            self._resolved[folder] = _walk("/", folder)
        names = self._resolved[folder]
        if names is None:
            return None
        rest = _walk(names[-1] if names else "/", leaf)
        return None if rest is None else (names, rest)


def _walk(start: str, relative: str) -> list[str] | None:
    """The names a lookup of `relative` from the resolved folder `start` passes, as
    posixpath.realpath walks it: each component, each symlink and where it leads; the last is the
    resolved path. None when a name on the way is missing or the links loop."""
    passed: list[str] = []
    pending = [p for p in reversed(relative.split("/")) if p not in ("", ".")]
    current, links = start, 0
    while pending:
        part = pending.pop()
        if part == "..":
            current = os.path.dirname(current)
            continue
        name = os.path.join(current, part)
        passed.append(name)
        try:
            if not stat.S_ISLNK(os.lstat(name).st_mode):
                current = name
                continue
            target = os.readlink(name)
        except OSError:
            return None
        links += 1
        if links > _MAX_LINKS:
            return None
        current = "/" if target.startswith("/") else current
        pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
    if passed and passed[-1] != current:
        passed.append(current)
    return passed
