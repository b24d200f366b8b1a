"""One inotify instance, read without a thread: `add` a folder, `drain` the events queued since.

The kernel side of every watch in the bridge: `run`'s watcher (bridge/runtime/inotify.py) reads
one from its thread; the `file` provider drains its own at each change check. A kernel watch belongs
to an inode, so two paths naming one folder get one watch descriptor. This module follows nothing
but the folder it is given and reads nothing but the event queue; it imports nothing of the bridge.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
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

#: (watch descriptor, event mask, the name in the folder or "")
Event = tuple[int, int, str]


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


class InotifyQueue:
    """An inotify instance (non-blocking, close-on-exec), opened at once; OSError when refused."""

    def __init__(self) -> None:
        self._libc = _Libc()
        self.fd = self._libc.check(self._libc.init1(_IN_CLOEXEC | _IN_NONBLOCK))

    def add(self, path: str, mask: int = CHANGES) -> int:
        """Watch the folder `path`; its watch descriptor. OSError when the kernel refuses (no such
        folder, the watch limit reached)."""
        return self._libc.check(self._libc.add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR | IN_MASK_ADD),
                                path)

    def remove(self, wd: int) -> None:
        """Drop a watch (EINVAL when its folder went first: no matter)."""
        self._libc.rm_watch(self.fd, wd)

    def read(self) -> list[Event]:
        """The events of one read(2); [] when none is queued."""
        try:
            return parse(os.read(self.fd, _READ_BYTES))
        except BlockingIOError:
            return []

    def drain(self) -> list[Event]:
        """Every event queued now."""
        events: list[Event] = []
        while batch := self.read():
            events += batch
        return events

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def parse(data: bytes) -> list[Event]:
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
