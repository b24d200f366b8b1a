"""The loop of `run`: keeps an engine in step between the cycles it runs. Each turn: a cycle (the
engine plans what is due itself), the providers' upkeep when due, the drift watch moved to the
current generation and a sweep when due, replaced generations pruned, then a sleep until the
earliest of those is due again or something wakes it.

What it asks of the engine is narrow: `cycle()`, `next_wake()`, `providers` (their `maintain()`),
`writer` (follow, sweep, prune) and the two health fields `heartbeat`/`waiting`. It never fetches,
renders or commits on its own, and never logs a value.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

from bridge.engine.cycle import Engine
from bridge.errors import ProviderError, WriteError, contained
from bridge.observe.metrics import DRIFT_REPAIRS
from bridge.runtime.watch import DriftWatch

log = logging.getLogger("secrets_bridge.engine")

#: a provider's upkeep (`maintain()`) runs at most this often, and this long after one that failed
UPKEEP_MIN_SECONDS = 1.0
UPKEEP_RETRY_SECONDS = 5.0


class Waiter(Protocol):
    """What the loop waits on: set by a signal handler or a file watcher to wake it."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> object: ...


class Loop:
    """Runs `engine` until woken. Made once per `run` and kept across reloads (`use` hands it the
    new engine), so the drift watch and its clock carry over. Without a `drift` watch (nothing could
    wake the loop for an event) the output directory is swept on the fallback clock."""

    def __init__(self, engine: Engine, drift: DriftWatch | None = None) -> None:
        self.engine = engine
        self._own_drift = drift is None
        self.drift = drift if drift is not None else DriftWatch()
        self._next_upkeep = 0.0
        self._drift_failing = False

    def use(self, engine: Engine) -> None:
        """Drive `engine` from now on (a reload); its providers are asked for upkeep at once."""
        self.engine, self._next_upkeep = engine, 0.0

    def run(self, wake: Waiter) -> None:
        """Keep in step until `wake` is set; the cycle in progress always finishes. Between due
        times the loop sleeps: nothing runs on a clock while nothing is due."""
        engine = self.engine
        while not wake.is_set():
            engine.heartbeat = time.monotonic()
            if engine.cycle().asked:
                self._next_upkeep = 0.0  # a login or renewal on the way moves the next upkeep: ask again
            if time.monotonic() >= self._next_upkeep:
                self._next_upkeep = self.upkeep()
            self.drift.follow(engine.settings.output_dir, engine.writer.generation)
            if time.monotonic() >= self.drift.next_sweep():
                self.repair_drift()
            prune_in = engine.writer.prune()
            due = min(engine.next_wake(), self._next_upkeep, self.drift.next_sweep(),
                      time.monotonic() + (math.inf if prune_in is None else prune_in))
            engine.waiting = True
            try:
                wake.wait(max(0.0, due - time.monotonic()) if due < math.inf else None)
            finally:
                engine.heartbeat, engine.waiting = time.monotonic(), False  # the wait was no stall

    def stop(self) -> None:
        """Let the drift watch go when this loop made it."""
        if self._own_drift:
            self.drift.stop()

    def upkeep(self) -> float:
        """Let each provider keep its credentials alive (renew a token before it expires, whatever
        the refresh interval); returns when the next upkeep is due."""
        now, upkeep = time.monotonic(), math.inf
        for provider in self.engine.providers.values():
            wait = contained(provider.name, provider.maintain)
            if isinstance(wait, ProviderError):
                wait = UPKEEP_RETRY_SECONDS
            if wait is not None:
                upkeep = min(upkeep, now + max(UPKEEP_MIN_SECONDS, wait))
        return upkeep

    def repair_drift(self) -> list[str]:
        """Put back what something else changed in the output directory (SPEC "Drift repair"): logged
        and counted, never a change, so no on_change and no audit event."""
        output_dir = self.engine.settings.output_dir
        self.drift.sweeping()
        try:
            repaired = self.engine.writer.check_drift()
        except WriteError as exc:
            if not self._drift_failing:
                log.error("cannot repair %s: %s", output_dir, exc)
                self._drift_failing = True
            self.drift.failed()  # nothing may happen to bring the next sweep forward
            return []
        self._drift_failing = False
        if repaired:
            DRIFT_REPAIRS.inc(len(repaired))
            names = ", ".join(repaired[:10]) + (", ..." if len(repaired) > 10 else "")
            log.warning("put back %d changed by something else in %s: %s", len(repaired), output_dir, names)
        return repaired
