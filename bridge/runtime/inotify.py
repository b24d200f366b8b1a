"""One inotify instance and one thread that reads it, shared by every watch of `run` (the config
file and the output directory): `Watcher.add(path, mask, handler)` calls `handler(path, name, mask)`
from that thread for each event, where `path` is the folder as the caller named it.

A kernel watch belongs to an inode, so two callers watching one folder share it; each keeps its own
handle, and the watch goes when the last handle is removed. An event queued for a watch already
removed is dropped. Handlers run on the reader thread and must not block; they never call back into
the watcher. This module never follows anything but the folder it is given, and reads nothing but
the event queue.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bridge.inotify_queue import CHANGES, IN_IGNORED, IN_Q_OVERFLOW, Event, InotifyQueue

#: (the folder as its caller named it, the name in it or "", the event mask)
Handler = Callable[[str, str, int], None]


@dataclass(eq=False)
class Handle:
    """One caller's watch of one folder; `Watcher.remove` takes it back."""

    path: str
    wd: int
    handler: Handler


class Watcher:
    """The one inotify reader of the process. Made lazily: nothing is opened before the first `add`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: InotifyQueue | None = None
        self._handles: dict[int, list[Handle]] = {}
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1

    def add(self, path: str, handler: Handler, mask: int = CHANGES) -> Handle:
        """Watch the folder `path` (never through a final symlink); OSError when the kernel refuses
        (no such folder, the inotify watch or instance limit reached)."""
        with self._lock:
            wd = self._open().add(path, mask)
            handle = Handle(path, wd, handler)
            self._handles.setdefault(wd, []).append(handle)
        return handle

    def remove(self, handle: Handle | None) -> None:
        """Take a handle back; the kernel's watch goes with the last one on its folder."""
        if handle is None:
            return
        with self._lock:
            handles = self._handles.get(handle.wd, [])
            if handle in handles:
                handles.remove(handle)
            if handles or handle.wd not in self._handles:
                return
            del self._handles[handle.wd]
            if self._queue is not None:
                self._queue.remove(handle.wd)

    def stop(self) -> None:
        """Stop the reader thread and wait for it, so no handler runs after this returns."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"\0")
            thread.join(timeout=5)
        with self._lock:
            if self._queue is not None:
                self._queue.close()
            for fd in (self._stop_r, self._stop_w):
                if fd >= 0:
                    os.close(fd)
            self._queue, self._stop_r, self._stop_w = None, -1, -1
            self._handles.clear()

    # -- the reader thread -------------------------------------------------------------------

    def _open(self) -> InotifyQueue:
        if self._queue is None:
            self._queue = InotifyQueue()
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._thread = threading.Thread(target=self._read_loop, args=(self._queue, self._stop_r),
                                            name="file-watch", daemon=True)
            self._thread.start()
        return self._queue

    def _read_loop(self, queue: InotifyQueue, stop: int) -> None:
        poller = select.poll()  # not select(): a descriptor past 1023 is fine here
        poller.register(queue.fd, select.POLLIN)
        poller.register(stop, select.POLLIN)
        while True:
            try:
                ready = {ready_fd for ready_fd, _ in poller.poll()}
            except (OSError, ValueError):
                return  # closed under us
            if stop in ready:
                return
            try:
                events = queue.read()
            except OSError:
                return
            self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        calls: list[tuple[Handle, str, int]] = []
        with self._lock:
            for wd, mask, name in events:
                if mask & IN_Q_OVERFLOW:  # events were lost: every caller is told something changed
                    calls.extend((h, "", mask) for hs in self._handles.values() for h in hs)
                    continue
                if mask & IN_IGNORED:  # the kernel dropped the watch (its folder is gone)
                    self._handles.pop(wd, None)
                    continue
                calls.extend((h, name, mask) for h in self._handles.get(wd, ()))
        for handle, name, mask in calls:
            handle.handler(handle.path, name, mask)
