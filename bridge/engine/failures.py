"""How failures are told: logged once when they start and once when they end (never at every retry),
and the `secrets_bridge_secret_failing{secret,code}` gauge. Messages name secrets, refs and error
codes, never a value.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from bridge.engine.outputs import Output
from bridge.engine.units import Unit
from bridge.errors import ProviderError
from bridge.observe.metrics import SECRET_ERRORS

log = logging.getLogger("secrets_bridge.engine")

#: more new failures than this in one cycle are logged as one line per provider and error
LOG_EACH_UP_TO = 3


def failing(names: Iterable[str], old: ProviderError | None, new: ProviderError | None) -> None:
    """Move each secret's failing gauge from `old`'s code to `new`'s (None: not failing)."""
    for name in names:
        if old is not None:
            with contextlib.suppress(KeyError):
                SECRET_ERRORS.remove(name, old.code)
        if new is not None:
            SECRET_ERRORS.labels(secret=name, code=new.code).set(1)


def forget(entries: Iterable[Output]) -> None:
    """Drop the gauges of an engine that goes away (a reload builds its own)."""
    for entry in entries:
        for error in {entry.error, *(u.error for u in entry.units.values())}:
            failing([entry.name], error, None)


def log_new_failures(provider: str, code: str, units: list[Unit], entry: Callable[[str], Output]) -> None:
    """The first failure of each unit; many at once (a provider down) as one line."""
    if len(units) > LOG_EACH_UP_TO:
        log.error("provider %s: %d secrets failing (%s), e.g. %s: %s; keeping their last good files",
                  provider, len(units), code, ", ".join(units[0].entries), units[0].error)
        return
    for unit in units:
        has_files = any(entry(n).files for n in unit.entries)
        level = logging.WARNING if has_files or unit.optional else logging.ERROR
        keeps = "keeping the last good file" if has_files else "no file yet"
        log.log(level, "secret %s: %s (%s); %s", ", ".join(unit.entries), unit.error, code, keeps)


def render_failed(entry: Output, error: ProviderError) -> bool:
    """Record an entry that cannot render; True when this failure is new (logged)."""
    new = entry.error is None or str(entry.error) != str(error)
    if new:
        keeps = "keeping the last good file" if entry.files else "no file yet"
        log.log(logging.WARNING if entry.files else logging.ERROR, "secret %s: %s (%s); %s",
                entry.name, error, error.code, keeps)
        failing([entry.name], entry.error, error)
    if entry.error is None:
        entry.failing_since = time.monotonic()  # its files are stale from now (readiness)
    entry.error = error
    return new


def renders_again(entry: Output) -> bool:
    """An entry that failed to render renders again; True when it had failed."""
    if entry.error is None:
        return False
    log.info("secret %s: renders again", entry.name)
    failing([entry.name], entry.error, None)
    entry.error, entry.failing_since = None, None
    return True
