"""Imported first by the CLI: a SIGHUP while the rest of the bridge imports must not kill it.

SIGHUP's default action ends a process, and `run` installs its own handlers only after about 0.3 s
of imports and config loading; a reload signal sent in that window (a config tool, an operator)
would kill the sidecar. This module imports nothing else, so it runs within a millisecond of the
interpreter's own start-up (~20 ms), which comes before any of our code and stays exposed.
A handler, unlike SIG_IGN, is reset to the default in commands the bridge starts.
"""

import signal
from types import FrameType


def ignore_early_reload(signum: int, frame: FrameType | None) -> None:
    """The config about to be read is the newest anyway; `run`'s own handler replaces this one."""


signal.signal(signal.SIGHUP, ignore_early_reload)


#: glibc's mallopt parameter for the size from which an allocation gets its own mapping
_M_MMAP_THRESHOLD = -3
#: glibc's own starting value, kept fixed
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_large_frees() -> bool:
    """Keep glibc's mmap threshold at its starting 128 KiB. By default glibc raises it to the size of
    each mapped block freed (up to 32 MiB), so after the first big dictionary of a 100,000-secret
    start is resized, later big blocks come from the heap and stay in the process once freed: 33 MiB
    of RSS at 100,000 secrets. False where the C library has no `mallopt` (musl) or refuses."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the interpreter's own C library, already loaded
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
