"""The one way tests wait for something: poll a predicate until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True as soon as `predicate()` is truthy; False if it is still falsy after `timeout` seconds
    (asked once more at the deadline, so a slow last step is not lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
