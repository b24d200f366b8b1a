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
