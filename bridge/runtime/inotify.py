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
import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000
_IN_CLOEXEC, _IN_NONBLOCK = os.O_CLOEXEC, os.O_NONBLOCK  # inotify_init1 takes the open(2) flags

#: a change of a name or of what it holds; never an open, a read or a close without a write
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_BYTES = 64 * 1024

#: (the folder as its caller named it, the name in it or "", the event mask)
Handler = Callable[[str, str, int], None]


@dataclass(eq=False)
class Handle:
    """One caller's watch of one folder; `Watcher.remove` takes it back."""

    path: str
    wd: int
    handler: Handler


class _Libc:
    """The three inotify calls, through the C library already loaded (no lookup, no subprocess)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch = libc.inotify_rm_watch

    @staticmethod
    def check(result: int, path: str | None = None) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return result


class Watcher:
    """The one inotify reader of the process. Made lazily: nothing is opened before the first `add`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._libc: _Libc | None = None
        self._handles: dict[int, list[Handle]] = {}
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1

    def add(self, path: str, handler: Handler, mask: int = CHANGES) -> Handle:
        """Watch the folder `path` (never through a final symlink); OSError when the kernel refuses
        (no such folder, the inotify watch or instance limit reached)."""
        with self._lock:
            fd, libc = self._open()
            wd = libc.check(libc.add_watch(fd, os.fsencode(path), mask | IN_ONLYDIR | IN_MASK_ADD), path)
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
            if self._fd is not None and self._libc is not None:
                self._libc.rm_watch(self._fd, handle.wd)  # EINVAL when the folder went first: no matter

    def stop(self) -> None:
        """Stop the reader thread and wait for it, so no handler runs after this returns."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"\0")
            thread.join(timeout=5)
        with self._lock:
            for fd in (self._fd, self._stop_r, self._stop_w):
                if fd is not None and fd >= 0:
                    os.close(fd)
            self._fd, self._stop_r, self._stop_w = None, -1, -1
            self._handles.clear()

    # -- the reader thread -------------------------------------------------------------------

    def _open(self) -> tuple[int, _Libc]:
        if self._fd is None or self._libc is None:
            self._libc = self._libc or _Libc()
            self._fd = self._libc.check(self._libc.init1(_IN_CLOEXEC | _IN_NONBLOCK))
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._thread = threading.Thread(target=self._read_loop, args=(self._fd, self._stop_r),
                                            name="file-watch", daemon=True)
            self._thread.start()
        return self._fd, self._libc

    def _read_loop(self, fd: int, stop: int) -> None:
        poller = select.poll()  # not select(): a descriptor past 1023 is fine here
        poller.register(fd, select.POLLIN)
        poller.register(stop, select.POLLIN)
        while True:
            try:
                ready = {ready_fd for ready_fd, _ in poller.poll()}
            except (OSError, ValueError):
                return  # closed under us
            if stop in ready:
                return
            try:
                data = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        calls: list[tuple[Handle, str, int]] = []
        with self._lock:
            for wd, mask, name in _events(data):
                if mask & IN_Q_OVERFLOW:  # events were lost: every caller is told something changed
                    calls.extend((h, "", mask) for hs in self._handles.values() for h in hs)
                    continue
                if mask & IN_IGNORED:  # the kernel dropped the watch (its folder is gone)
                    self._handles.pop(wd, None)
                    continue
                calls.extend((h, name, mask) for h in self._handles.get(wd, ()))
        for handle, name, mask in calls:
            handle.handler(handle.path, name, mask)


def _events(data: bytes) -> list[tuple[int, int, str]]:
    """Parse `struct inotify_event` records: (wd, mask, name)."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset:offset + length].rstrip(b"\0")
        offset += length
        events.append((wd, mask, os.fsdecode(name)))
    return events


def watch_limit_error(exc: OSError) -> str:
    """A reason for the log line when a watch cannot be set."""
    if exc.errno == errno.ENOSPC:
        return "the inotify watch limit is reached"
    if exc.errno == errno.EMFILE:
        return "the inotify instance limit is reached"
    return exc.strerror or str(exc)
