"""Imported at start-up (as `sitecustomize`) only by a bridge that tests/harness.py runs under
libfaketime (`Bridge(clock=...)`), never otherwise.

libfaketime with FAKETIME_DONT_FAKE_MONOTONIC (the monotonic clock kept real, as a host whose wall
clock is off keeps it) fails every clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) with EINVAL, and
that is how `time.sleep` waits: a bridge sleeping through a generation's grace at shutdown then ends
with "internal error (OSError)", which no real skewed clock causes. Here `time.sleep` is the same
wait through select(), which libfaketime leaves alone. (Faking the monotonic clock too is no way
out: threading's timed waits then never return.)
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
